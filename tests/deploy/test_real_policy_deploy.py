"""Deploy paths against a real (tiny, random) VPPPolicy saved as a stage-2 checkpoint with stats.json."""

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from deploy import PolicyClient
from deploy.server import PolicyServer
from policy_models.checkpoints import load_inference_policy
from policy_models.normalization import Stats
from vpp_core.config import ConfigError

POLICY_CONF = Path(__file__).resolve().parents[2] / "policy_conf" / "model"
CAMS = ["cam_high", "cam_left", "cam_right"]


@pytest.fixture(scope="module")
def xbot_checkpoint(tiny_model_dirs, tmp_path_factory):
    from policy_models.checkpoints import save_policy_checkpoint
    from policy_models.policy import build_policy

    svd, clip = tiny_model_dirs
    cfg = OmegaConf.load(POLICY_CONF / "tiny.yaml")
    cfg.embodiment.update({"name": "xbot", "cameras": CAMS, "action_dim": 38, "chunk_length": 8, "state_dim": 38})
    cfg.model.multistep = 8
    torch.manual_seed(0)
    policy = build_policy(cfg, video_model_path=str(svd), clip_model_path=str(clip)).eval()
    rng = np.random.default_rng(0)
    s01 = rng.uniform(-1, 0, 38)
    stats = Stats(state_01=s01, state_99=s01 + 1.0, action_01=np.full(38, -0.1), action_99=np.full(38, 0.2))
    run = tmp_path_factory.mktemp("run")
    ckpt = save_policy_checkpoint(run / "checkpoints" / "step_0000010", policy, cfg, stats=stats.to_dict())
    (run / "last").write_text(str(ckpt))
    return run, ckpt, svd, clip, stats


def test_xbot_agent_loads_checkpoint_and_runs(xbot_checkpoint):
    import step3_deploy_real_xbot

    run, ckpt, svd, clip, stats = xbot_checkpoint
    agent = step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu")  # run folder: `last` pointer
    np.testing.assert_allclose(agent.stats.action_99, stats.action_99)
    img = torch.rand(1, 1, 3, 256, 256) * 2 - 1
    state = np.random.default_rng(1).normal(size=(1, 1, 38))
    delta = agent.run_3image(img, img, np.full((480, 640, 3), 100, np.uint8), "place the bag", state)
    assert delta.shape == (1, 8, 38) and np.all(np.isfinite(delta))
    targets = agent.caculate_absolute_action(delta, state)
    assert targets.shape == (8, 38)
    np.testing.assert_allclose(targets - state[0], stats.denormalize_action(delta[0]), atol=1e-6)


def test_xbot_agent_loads_through_the_servers_fast_path(xbot_checkpoint, monkeypatch):
    """The in-process agent gets what the server gets: the exact fast path (one CUDA graph per chunk on CUDA), TF32
    unless asked otherwise, and compiling by default on CUDA only ("auto")."""
    import step3_deploy_real_xbot
    import video_models.attention_kernels
    from policy_models.policy import VPPPolicy

    run, _, svd, clip, _ = xbot_checkpoint
    calls = []
    monkeypatch.setattr(VPPPolicy, "use_fastest_exact_inference",
                        lambda self, cudnn_benchmark=False: calls.append("exact"))
    monkeypatch.setattr(VPPPolicy, "compile_for_inference", lambda self, mode="default": calls.append(mode))
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    monkeypatch.setattr(video_models.attention_kernels, "use_short_query_kernels", lambda unet: calls.append("short"))
    step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu")
    assert calls == ["high", "exact"]  # short-query kernels "auto": CUDA only
    calls.clear()
    step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu", compile_mode="default",
                                     float32_matmul_precision="highest", short_query_attention=True)
    assert calls == ["highest", "exact", "short", "default"]  # the kernels before compiling: the graphs trace them
    with pytest.raises(ConfigError, match="compile_mode"):
        step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu", compile_mode="reduce-overhead")


def test_xbot_agent_warms_up_when_it_compiles(xbot_checkpoint, monkeypatch):
    """Compiling takes minutes at full size on the first chunk: the agent runs that chunk before it returns, so the
    robot's loop never waits for it; without compiling it returns at once."""
    import step3_deploy_real_xbot
    from policy_models.policy import VPPPolicy

    run, _, svd, clip, _ = xbot_checkpoint
    monkeypatch.setattr(VPPPolicy, "compile_for_inference", lambda self, mode="default": None)
    chunks = []
    predict = VPPPolicy.predict_action_chunk
    monkeypatch.setattr(VPPPolicy, "predict_action_chunk",
                        lambda self, obs, text: chunks.append(text) or predict(self, obs, text))
    step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu")  # auto: compiles on CUDA only
    assert chunks == []
    step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu", compile_mode="default")
    assert chunks == ["warm up"]
    step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu", compile_mode="default", warm_up=False)
    assert chunks == ["warm up"]


def test_inference_policy_short_query_kernels_are_installed_when_asked(xbot_checkpoint):
    from video_models.attention_kernels import ShortQueryKernelProcessor

    _, ckpt, svd, clip, _ = xbot_checkpoint

    def short_query_layers(policy) -> int:
        return sum(isinstance(getattr(m, "processor", None), ShortQueryKernelProcessor)
                   for m in policy.tvp_encoder.unet.modules())

    assert short_query_layers(load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu")) == 0  # auto: CUDA
    policy = load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu", short_query_attention=True)
    assert short_query_layers(policy) > 0
    obs = {"rgb_obs": {cam: np.zeros((1, 64, 64, 3), np.uint8) for cam in policy.embodiment.cameras},
           "state_obs": np.zeros((1, 38), np.float32)}
    assert policy.predict_action_chunk(obs, "place the bag").isfinite().all()


def test_server_serves_checkpoint_with_stats(xbot_checkpoint):
    _, ckpt, svd, clip, stats = xbot_checkpoint
    policy = load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu")
    outputs = []
    predict = policy.predict_action_chunk

    def recording_predict(obs, instruction):
        outputs.append((obs, predict(obs, instruction)))
        return outputs[-1][1]

    policy.predict_action_chunk = recording_predict
    with PolicyServer(policy, port=0).start_in_thread() as t, PolicyClient(port=t.port) as client:
        md = client.metadata
        assert md["cameras"] == CAMS and md["state_dim"] == 38 and md["chunk_length"] == 8
        assert md["relative_mode"] == "componentwise" and md["model_resolution"] == policy.resolution
        obs = {"rgb_obs": {c: np.full((120, 160, 3), 50 * i, np.uint8) for i, c in enumerate(CAMS)},
               "state_obs": np.zeros(38, np.float32)}
        actions = client.infer(obs, "place the bag")["actions"]
        assert actions.shape == (8, 38) and actions.dtype == np.float32
        # the server normalised the state going in and de-normalised the model's chunk coming out
        sent_obs, raw = outputs[-1]
        np.testing.assert_allclose(sent_obs["state_obs"].numpy(), stats.normalize_state(np.zeros((1, 38))), atol=1e-6)
        assert sent_obs["rgb_obs"]["cam_left"].shape == (1, 120, 160, 3)
        np.testing.assert_allclose(actions, stats.denormalize_action(raw[0].numpy()), atol=1e-6)


def test_server_compile_flag_compiles_the_loaded_policy(xbot_checkpoint, monkeypatch):
    from deploy.server import add_server_args
    from policy_models.policy import VPPPolicy

    _, ckpt, svd, clip, _ = xbot_checkpoint
    modes = []
    monkeypatch.setattr(VPPPolicy, "compile_for_inference", lambda self, mode="default": modes.append(mode))
    load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu")
    assert modes == []  # opt-in
    load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu", compile_mode="default")
    assert modes == ["default"]
    import argparse

    parser = argparse.ArgumentParser()
    add_server_args(parser)
    assert parser.parse_args(["--compile"]).compile == "default"
    assert parser.parse_args([]).compile == "auto"  # compiled on CUDA, warmed up before the server listens
    assert parser.parse_args(["--compile", "none"]).compile == "none"


def test_server_sets_the_float32_matmul_precision(xbot_checkpoint, monkeypatch):
    """TF32 for the float32 action head unless asked otherwise, set for the server's process before the policy is
    built."""
    import argparse

    from deploy.server import add_server_args

    _, ckpt, svd, clip, _ = xbot_checkpoint
    seen = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", seen.append)
    load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu")
    load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu", float32_matmul_precision="highest")
    assert seen == ["high", "highest"]
    parser = argparse.ArgumentParser()
    add_server_args(parser)
    assert parser.parse_args([]).float32_matmul_precision == "high"
    with pytest.raises(SystemExit):
        parser.parse_args(["--float32_matmul_precision", "tf32"])
    assert parser.parse_args([]).short_query_attention == "auto"
    assert [parser.parse_args(["--short_query_attention", v]).short_query_attention for v in ("true", "false")] == [
        True, False]
    with pytest.raises(SystemExit):
        parser.parse_args(["--short_query_attention", "sometimes"])
    with pytest.raises(SystemExit):  # inductor's own CUDA graphs would clash with the whole-chunk graph
        parser.parse_args(["--compile", "reduce-overhead"])


def test_the_fused_decoder_is_auto_and_needs_cuda(xbot_checkpoint):
    """"auto" (the default) stays off on the CPU; asked for on the CPU, loading fails and says why."""
    _, ckpt, svd, clip, _ = xbot_checkpoint
    assert not load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu").fused_decoder
    assert not load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu", fused_decoder="auto").fused_decoder
    with pytest.raises(ValueError, match="needs a CUDA device"):
        load_inference_policy(str(ckpt), str(svd), str(clip), device="cpu", fused_decoder=True)


@pytest.mark.parametrize("flag, fused", [([], "auto"), (["--fused_decoder"], True),
                                         (["--fused_decoder", "auto"], "auto"), (["--fused_decoder", "false"], False)])
def test_server_passes_its_fused_decoder_setting_to_the_loader(flag, fused, monkeypatch):
    """--fused_decoder reaches the loader as the evaluator's switch does: auto by default, bare means on."""
    import argparse

    from deploy import server as server_module
    from deploy.fake_policy import FakePolicy
    from deploy.server import PolicyServer
    from policy_models import checkpoints

    loaded = []
    monkeypatch.setattr(checkpoints, "load_inference_policy",
                        lambda *a, fused_decoder, **kw: loaded.append(fused_decoder) or FakePolicy())

    async def serve_forever(self):
        pass

    monkeypatch.setattr(PolicyServer, "serve_forever", serve_forever)
    parser = argparse.ArgumentParser()
    server_module.add_server_args(parser)
    server_module.run_server_from_args(parser.parse_args(["--checkpoint", "C", "--device", "cpu", "--compile", "none",
                                                          *flag]))
    assert loaded == [fused]
    with pytest.raises(SystemExit):
        parser.parse_args(["--fused_decoder", "sometimes"])


def test_xbot_agent_takes_the_fused_decoder_setting(xbot_checkpoint, monkeypatch):
    """The agent's fused decoder goes through the server's loader: its default "auto" leaves it off on the CPU, and
    asked for there, the loader refuses it rather than running the eager decoder instead."""
    import step3_deploy_real_xbot
    from policy_models.policy import VPPPolicy

    run, _, svd, clip, _ = xbot_checkpoint
    switched = []
    real_switch = VPPPolicy.use_fused_decoder
    monkeypatch.setattr(VPPPolicy, "use_fused_decoder", lambda self, enabled=True: switched.append(enabled))
    step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu", compile_mode=None)
    assert switched == []  # "auto": off on the CPU
    step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu", compile_mode=None, fused_decoder=True)
    assert switched == [True]
    monkeypatch.setattr(VPPPolicy, "use_fused_decoder", real_switch)
    with pytest.raises(ValueError, match="needs a CUDA device"):  # the real switch, on the CPU
        step3_deploy_real_xbot.XbotAgent(run, str(svd), str(clip), device="cpu", compile_mode=None,
                                         fused_decoder=True)


def _server_error_line(capsys, exit_info) -> str:
    """The one line a refused server command printed, after checking it ended as the other entry scripts do."""
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("error:") == 1
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("entry", ["deploy.server", "step3_deploy_real_xbot serve"])
def test_server_reports_a_wrong_checkpoint_path_in_one_line(entry, tmp_path, capsys):
    """A mistyped --checkpoint ends either server command with one `error:` line naming the path, not a traceback."""
    import importlib

    module, *command = entry.split()
    main = importlib.import_module(module).main
    missing = tmp_path / "runs" / "nope"
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--checkpoint", str(missing), "--device", "cpu", "--compile", "none"])
    assert _server_error_line(capsys, exit_info) == f"error: checkpoint folder {missing} does not exist"


def test_server_reports_a_wrong_video_model_path_in_one_line(xbot_checkpoint, tmp_path, capsys):
    import step3_deploy_real_xbot

    run, _, _, clip, _ = xbot_checkpoint
    with pytest.raises(SystemExit) as exit_info:
        step3_deploy_real_xbot.main(["serve", "--checkpoint", str(run), "--video_model_path", str(tmp_path / "svd"),
                                     "--clip_model_path", str(clip), "--device", "cpu", "--compile", "none"])
    assert _server_error_line(capsys, exit_info).startswith(f"error: video model folder not found: {tmp_path / 'svd'}")
