"""Stage-1 data: annotation/latent readers for the original on-disk layout, dataset mixing, frame preprocessing,
latent preparation and the teleop HDF5 importer (vpp_reference §2, §4)."""

from video_dataset.annotations import Annotation, DatasetError, load_annotation, load_latent
from video_dataset.dataset_mix import DatasetMix, MixRules

__all__ = ["Annotation", "DatasetError", "DatasetMix", "MixRules", "load_annotation", "load_latent"]
