"""Which checkpoint is evaluated, and how evaluation processes load it.

Checkpoint choice (`resolve_checkpoint`), the same rule as policy_models.checkpoints.resolve_checkpoint_dir:
* a folder with config.yaml is a stage-2 checkpoint folder and is used as it is;
* otherwise it is a run folder: its `last` file (in the run folder, or in its checkpoints/ sub-folder) names the
  checkpoint folder (absolute, or relative to the folder holding `last`, or to the run folder);
* anything else is an error that names the path.
The results are keyed by the checkpoint folder's name (e.g. "step_0100000").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# CALVIN evaluation sampling settings (vpp_reference §8.1 step 5, §12.1.8): sigma_min 1.0 instead of training's 0.001
EVAL_POLICY_OVERRIDES: dict[str, Any] = {
    "model.diffusion.sigma_min": 1.0,
    "model.diffusion.sigma_max": 80.0,
    "model.diffusion.num_sampling_steps": 10,
    "model.diffusion.sampler_type": "ddim",
    "model.diffusion.noise_scheduler": "exponential",
    "model.multistep": 10,
}


class CheckpointNotFoundError(FileNotFoundError):
    pass


def resolve_checkpoint(path: str | Path, pointer: str = "last") -> Path:
    """The checkpoint folder to evaluate (see module docstring); raises CheckpointNotFoundError with the reason."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"--action_model_folder {path} does not exist")
    if not path.is_dir():
        raise CheckpointNotFoundError(
            f"--action_model_folder {path} is a file; pass a stage-2 checkpoint folder (with config.yaml and "
            "model.safetensors) or a training run folder with a 'last' pointer (convert released .pt files first)"
        )
    from policy_models.checkpoints import CheckpointError, resolve_checkpoint_dir

    try:
        return Path(resolve_checkpoint_dir(path, pointer))
    except CheckpointError as exc:
        raise CheckpointNotFoundError(str(exc)) from exc


def check_calvin_embodiment(checkpoint_dir: str | Path) -> None:
    """Refuse, before any process or model starts, a checkpoint trained for another robot: the CALVIN protocol (and
    the built-in simulator, which follows it) gives the static and gripper cameras and takes 7-D actions, without a
    state token. Raises CheckpointError naming the checkpoint's embodiment."""
    from policy_models.checkpoints import CheckpointError, checkpoint_embodiment
    from policy_models.config import EmbodimentConfig

    calvin, found = EmbodimentConfig(), checkpoint_embodiment(checkpoint_dir)
    if (found.cameras, found.action_dim, found.state_dim) != (calvin.cameras, calvin.action_dim, calvin.state_dim):
        raise CheckpointError(
            f"{checkpoint_dir} holds a policy for embodiment {found.name!r} (cameras {found.cameras}, "
            f"{found.action_dim}-D actions, state_dim {found.state_dim}); the CALVIN evaluator needs cameras "
            f"{calvin.cameras}, {calvin.action_dim}-D actions and no state. Deploy other robots' policies with "
            "step3_deploy_real_xbot.py or the policy server (docs/CUSTOM_ROBOT.md)"
        )


@dataclass
class CheckpointPolicyFactory:
    """Picklable: each evaluation process calls it once to build the policy on its device."""

    checkpoint_dir: str
    video_model_path: str | None = None
    clip_model_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=lambda: dict(EVAL_POLICY_OVERRIDES))
    use_ema: bool = False
    dtype: str | None = None
    cudnn_benchmark: bool = False
    compile_mode: str | None = None  # None, "auto" (compiled on CUDA) or a torch.compile mode
    short_query_attention: bool | str = False  # True, False or "auto" (on CUDA)
    # torch.set_float32_matmul_precision for the float32 action head, process-wide: "highest" (full float32), "high"
    # (TF32, the evaluation yaml's default) or "medium"
    float32_matmul_precision: str = "highest"
    fused_decoder: bool | str = False  # True, False or "auto" (on CUDA): the sampler's decoder as Triton kernels

    @property
    def name(self) -> str:
        return Path(self.checkpoint_dir).name

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the policy's behaviour (recorded in eval_config.json; a resume must match)."""
        settings = {"overrides": dict(self.overrides), "use_ema": self.use_ema, "dtype": self.dtype,
                    "cudnn_benchmark": self.cudnn_benchmark, "compile": self.compile_mode}
        if self.short_query_attention is not False:  # evaluations from before the setting resume with it off
            settings["short_query_attention"] = self.short_query_attention
        if self.float32_matmul_precision != "highest":  # likewise: older evaluations ran at full float32
            settings["float32_matmul_precision"] = self.float32_matmul_precision
        if self.fused_decoder is not False:  # likewise
            settings["fused_decoder"] = self.fused_decoder
        return settings

    def __call__(self, device: str):
        from policy_models.checkpoints import load_inference_policy

        return load_inference_policy(
            self.checkpoint_dir,
            video_model_path=self.video_model_path,
            clip_model_path=self.clip_model_path,
            device=device,
            dtype=self.dtype,
            overrides=self.overrides,
            use_ema=self.use_ema,
            cudnn_benchmark=self.cudnn_benchmark,
            compile_mode=self.compile_mode,
            short_query_attention=self.short_query_attention,
            float32_matmul_precision=self.float32_matmul_precision,
            fused_decoder=self.fused_decoder,
        )
