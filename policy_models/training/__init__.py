"""Stage-2 training: one trainer for every embodiment (see policy_models.training.trainer)."""
