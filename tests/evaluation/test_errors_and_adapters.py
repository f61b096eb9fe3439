"""Clear errors (missing CALVIN, missing merged_config.yaml, missing checkpoint) and the env adapters."""

import sys
from types import SimpleNamespace

import pytest
import torch

from policy_evaluation import calvin_env_adapter as cea
from policy_evaluation import calvin_evaluate
from policy_evaluation.policy_factory import CheckpointNotFoundError, CheckpointPolicyFactory, resolve_checkpoint
from policy_models.checkpoints import CheckpointError, read_state_file


def test_missing_merged_config_names_the_path(tmp_path):
    with pytest.raises(cea.CalvinSetupError) as exc:
        cea.validation_dir(tmp_path)
    assert str(tmp_path / "validation" / ".hydra" / "merged_config.yaml") in str(exc.value)
    with pytest.raises(cea.CalvinSetupError, match="merged_config.yaml"):
        cea.CalvinEnvFactory(str(tmp_path)).check()
    (tmp_path / "validation" / ".hydra").mkdir(parents=True)
    (tmp_path / "validation" / ".hydra" / "merged_config.yaml").write_text("env: {}\n")
    assert cea.validation_dir(tmp_path) == tmp_path / "validation"


def test_missing_calvin_env_explains_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "calvin_env", None)  # makes `import calvin_env` fail even if installed
    with pytest.raises(cea.CalvinSetupError) as exc:
        cea.import_calvin_env()
    msg = str(exc.value)
    for needle in ("git clone --recursive", "mees/calvin", "pip install -e calvin/calvin_env", "pip install rich",
                   "1431a46", "turn_off_led", "--env sim"):
        assert needle in msg, needle


def test_checkpoint_resolution(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "file.pt").write_text("x")
    with pytest.raises(CheckpointNotFoundError, match="is a file"):
        resolve_checkpoint(tmp_path / "file.pt")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="last"):
        resolve_checkpoint(run)
    ckpt = run / "checkpoints" / "step_0000100"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text("model: {}\n")
    assert resolve_checkpoint(ckpt) == ckpt  # a checkpoint folder is used as it is
    (run / "last").write_text("checkpoints/step_0000100\n")
    assert resolve_checkpoint(run).resolve() == ckpt.resolve()  # a run folder: its `last` pointer
    (run / "last").write_text("checkpoints/step_0000999\n")
    with pytest.raises(CheckpointNotFoundError, match="step_0000999"):
        resolve_checkpoint(run)


def test_policy_factory_name_and_settings():
    f = CheckpointPolicyFactory("/x/run/checkpoints/step_0000100")
    assert f.name == "step_0000100"
    assert f.settings["overrides"]["model.diffusion.sigma_min"] == 1.0
    assert f.settings["overrides"]["model.multistep"] == 10
    assert f.settings["cudnn_benchmark"] is False  # opt-in, and recorded so a resume cannot mix settings
    assert CheckpointPolicyFactory("/x", cudnn_benchmark=True).settings["cudnn_benchmark"] is True
    assert f.settings["compile"] is None  # opt-in and recorded too
    assert CheckpointPolicyFactory("/x", compile_mode="default").settings["compile"] == "default"


def test_policy_factory_compiles_only_when_asked(monkeypatch):
    """compile / short_query_attention "auto" (the yaml's default) switch on for CUDA devices only; the device is
    only read, so a stand-in policy shows the CUDA choice on this CPU machine."""
    import policy_models.checkpoints
    import video_models.attention_kernels

    calls = []

    class LoadedPolicy:
        tvp_encoder = SimpleNamespace(unet="the U-Net")

        def use_fastest_exact_inference(self, cudnn_benchmark=False):
            calls.append(("exact", cudnn_benchmark))

        def compile_for_inference(self, mode="default"):
            calls.append(("compile", mode))

        fused_decoder_problem_text = None

        def __init__(self, device):
            self.device = torch.device(device)

        def use_fused_decoder(self, enabled=True):
            calls.append(("fused_decoder", enabled))

        def fused_decoder_problem(self):  # as VPPPolicy's: the device first
            return "needs a CUDA device" if self.device.type != "cuda" else self.fused_decoder_problem_text

    monkeypatch.setattr(policy_models.checkpoints, "load_policy", lambda *args, device, **kwargs: LoadedPolicy(device))
    monkeypatch.setattr(video_models.attention_kernels, "use_short_query_kernels",
                        lambda unet: calls.append(("short_query", unet)))
    CheckpointPolicyFactory("/x")("cpu")
    assert calls == [("exact", False)]
    calls.clear()
    CheckpointPolicyFactory("/x", compile_mode="max-autotune-no-cudagraphs")("cpu")
    assert calls == [("exact", False), ("compile", "max-autotune-no-cudagraphs")]
    calls.clear()
    auto = CheckpointPolicyFactory("/x", compile_mode="auto", short_query_attention="auto")
    auto("cpu")
    assert calls == [("exact", False)]
    calls.clear()
    auto("cuda:1")
    assert calls == [("exact", False), ("short_query", "the U-Net"), ("compile", "default")]
    assert auto.settings["compile"] == "auto" and auto.settings["short_query_attention"] == "auto"
    # recorded only when on, so evaluation folders from before the setting existed still resume
    assert "short_query_attention" not in CheckpointPolicyFactory("/x").settings
    # the fused decoder, after compiling: "auto" on CUDA where the kernels run, else off with a warning saying why
    calls.clear()
    fused = CheckpointPolicyFactory("/x", fused_decoder="auto")
    fused("cpu")
    assert calls == [("exact", False)]
    calls.clear()
    fused("cuda:0")
    assert calls == [("exact", False), ("fused_decoder", True)]
    assert fused.settings["fused_decoder"] == "auto" and "fused_decoder" not in CheckpointPolicyFactory("/x").settings
    calls.clear()
    LoadedPolicy.fused_decoder_problem_text = "the fused decoder needs triton"
    with pytest.warns(UserWarning, match="fused_decoder auto: left off, the fused decoder needs triton"):
        fused("cuda:0")
    assert calls == [("exact", False)]


def test_policy_factory_sets_the_float32_matmul_precision(monkeypatch):
    """Set for the worker's process before the policy is built (graphs captured later keep what it chose); recorded
    unless it is full float32, which evaluations from before the setting ran with."""
    import policy_models.checkpoints

    monkeypatch.setattr(policy_models.checkpoints, "load_policy", lambda *args, **kwargs: SimpleNamespace(
        use_fastest_exact_inference=lambda cudnn_benchmark=False: None))
    seen = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", seen.append)
    CheckpointPolicyFactory("/x", float32_matmul_precision="high")("cpu")
    CheckpointPolicyFactory("/x")("cpu")
    assert seen == ["high", "highest"]
    assert CheckpointPolicyFactory("/x", float32_matmul_precision="high").settings["float32_matmul_precision"] == "high"
    assert "float32_matmul_precision" not in CheckpointPolicyFactory("/x").settings


def test_compile_setting_is_validated(tmp_path, capsys):
    parser = calvin_evaluate.build_parser()
    assert parser.parse_args(["--baseline", "random", "--compile"]).compile == "default"
    assert parser.parse_args(["--baseline", "random", "--compile", "none"]).compile == "none"
    assert parser.parse_args(["--baseline", "random", "--compile", "auto"]).compile == "auto"
    bad = tmp_path / "eval.yaml"
    bad.write_text("compile: reduce-overhead\n")
    assert calvin_evaluate.main(["--baseline", "random", "--env", "sim", "--config", str(bad)]) == 2
    assert "compile must be null, auto or one of" in capsys.readouterr().err
    bad.write_text("short_query_attention: sometimes\n")
    assert calvin_evaluate.main(["--baseline", "random", "--env", "sim", "--config", str(bad)]) == 2
    assert "short_query_attention must be true, false or auto" in capsys.readouterr().err
    bad.write_text("fused_decoder: sometimes\n")
    assert calvin_evaluate.main(["--baseline", "random", "--env", "sim", "--config", str(bad)]) == 2
    assert "fused_decoder must be true, false or auto" in capsys.readouterr().err
    assert parser.parse_args(["--baseline", "random", "--fused_decoder"]).fused_decoder is True
    assert parser.parse_args(["--baseline", "random", "--fused_decoder", "auto"]).fused_decoder == "auto"
    assert parser.parse_args(["--baseline", "random", "--fused_decoder", "false"]).fused_decoder is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--baseline", "random", "--fused_decoder", "sometimes"])
    bad.write_text("float32_matmul_precision: tf32\n")
    assert calvin_evaluate.main(["--baseline", "random", "--env", "sim", "--config", str(bad)]) == 2
    assert "float32_matmul_precision must be one of ['highest', 'high', 'medium']" in capsys.readouterr().err
    assert parser.parse_args(["--baseline", "random", "--float32_matmul_precision", "highest"]
                             ).float32_matmul_precision == "highest"


def test_cli_errors(tmp_path, capsys):
    rc = calvin_evaluate.main(["--action_model_folder", str(tmp_path / "missing"), "--calvin_abc_dir", str(tmp_path)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text("model: {}\n")
    rc = calvin_evaluate.main(["--action_model_folder", str(ckpt), "--calvin_abc_dir", str(tmp_path / "calvin")])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path / "calvin" / "validation" / ".hydra" / "merged_config.yaml") in err
    rc = calvin_evaluate.main(["--action_model_folder", str(ckpt)])
    assert rc == 2 and "--calvin_abc_dir is required" in capsys.readouterr().err
    rc = calvin_evaluate.main(["--action_model_folder", str(ckpt), "--env", "sim", "--shard", "3/2"])
    assert rc == 2 and "--shard" in capsys.readouterr().err


def test_checkpoints_of_other_robots_and_truncated_weights_are_named(tmp_path, capsys):
    xbot = tmp_path / "xbot"
    xbot.mkdir()
    (xbot / "config.yaml").write_text("embodiment: {name: xbot, cameras: [cam_high, cam_left, cam_right], "
                                      "action_dim: 38, chunk_length: 8, state_dim: 38}\n")
    rc = calvin_evaluate.main(["--action_model_folder", str(xbot), "--env", "sim", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "embodiment 'xbot'" in err and "7-D actions" in err and "Traceback" not in err
    weights = tmp_path / "model.safetensors"  # cut short by a copy
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="model.safetensors \\(truncated or not safetensors\\)"):
        read_state_file(weights)


def test_eval_config_defaults():
    cfg = calvin_evaluate.load_config(calvin_evaluate.DEFAULT_CONFIG)
    assert cfg["num_sequences"] == 1000 and cfg["ep_len"] == 360
    o = cfg["policy_overrides"]
    assert o["model.diffusion.sigma_min"] == 1.0 and o["model.diffusion.sigma_max"] == 80
    assert o["model.diffusion.num_sampling_steps"] == 10 and o["model.diffusion.noise_scheduler"] == "exponential"
    assert o["model.diffusion.sampler_type"] == "ddim" and o["model.multistep"] == 10
    assert calvin_evaluate.resolve_devices("cuda:0, cuda:1", 2) == ("cuda:0", "cuda:1")
    assert calvin_evaluate.resolve_devices("cpu", 1) == ("cpu",)


def test_instructions_are_the_validation_ones():
    from policy_evaluation.multistep_sequences import CALVIN_TASK_TABLE
    from policy_evaluation.suites import load_instructions

    instr = load_instructions()
    assert set(instr) == set(CALVIN_TASK_TABLE.task_names)
    assert instr["lift_red_block_drawer"] == "Take the red block from the drawer"
    assert instr["open_drawer"] == "pull the handle to open the drawer"


def test_builtin_simulator_through_the_runner(tmp_path):
    """--env sim end to end with a random policy: real env/oracle of vpp_sim, same protocol and outputs."""
    pytest.importorskip("pybullet")
    from policy_evaluation.runner import EvalSettings, read_records, run_evaluation
    from policy_evaluation.suites import sim_suite
    from policy_evaluation.testing import RandomPolicyFactory

    suite = sim_suite()
    metrics = run_evaluation(suite, RandomPolicyFactory(), EvalSettings(num_sequences=2, ep_len=4, progress=False),
                             tmp_path)
    recs = read_records(tmp_path / "results.jsonl")
    assert sorted(recs) == [0, 1]
    assert all(set(r["tasks"]) <= set(suite.instructions) for r in recs.values())
    assert 0 <= metrics["avg_seq_len"] <= 5
