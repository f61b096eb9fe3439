"""Stage-2 datasets: CALVIN episodes (also what the built-in simulator writes), xbot-style custom robots, and a
synthetic-data generator for tests, demos and benchmarks. All of them return samples in one batch format (see
:mod:`policy_models.datasets.base`)."""

from policy_models.datasets.base import DatasetError, RobotDataset, build_dataset, collate_samples, preprocess_rgb

__all__ = ["DatasetError", "RobotDataset", "build_dataset", "collate_samples", "preprocess_rgb"]
