"""Stage 1: the text-guided Stable Video Diffusion video predictor (model builders, conditioning, loss, pipeline)."""
