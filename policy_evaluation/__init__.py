"""CALVIN long-horizon evaluation (see README.md in this folder).

Modules: multistep_sequences (official sequences), utils (reset states), fnv (pyhash-free FNV-1), protocol (one
sequence), metrics, runner (shards/workers/resume/merge), suites (calvin / built-in sim), calvin_env_adapter,
policy_factory (checkpoint choice + loading), video, testing (scripted fakes), calvin_evaluate (CLI).
Nothing heavy is imported here.
"""
