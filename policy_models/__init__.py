"""Stage 2 of VPP: the action policy on top of the frozen video model.

Public entry points (imported lazily by callers):
    policy_models.config.policy_config_from / PolicyConfig      the model + embodiment schema
    policy_models.policy.VPPPolicy / build_policy               the policy
    policy_models.checkpoints.save_policy_checkpoint / load_policy / convert_released_checkpoint
"""
