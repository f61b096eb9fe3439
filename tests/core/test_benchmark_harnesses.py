"""The GPU benchmark harnesses run end to end on the CPU at small sizes and report what they were asked for."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


def run_harness(module, argv, monkeypatch, capsys) -> dict:
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv])
    module.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("size, latent", [("tiny", 8), ("small_sim", 16)])
def test_stage1_step_sizes(size, latent, monkeypatch, capsys):
    from benchmarks import stage1_step

    out = run_harness(stage1_step, ["--size", size, "--device", "cpu", "--batch", "1", "--warmup", "0", "--iters", "1",
                                    "--precision", "fp32", "--checkpointing", "none", "--profile", "5"],
                      monkeypatch, capsys)
    assert out["settings"]["latent"] == [16, 4, latent, latent] and out["parameter_dtype"] == "float32"
    assert out["step"]["median_ms"] > 0 and out["samples_per_s"] > 0
    # CPU: no GPU kernels to list and no device timeline, but the block exists
    assert set(out["profile"]) == {"gpu_ms_per_call", "kernels", "kinds", "timeline"}
    assert out["profile"]["timeline"] is None and out["profile"]["kinds"] == {}


def test_stage1_step_bf16_weights_measurement(monkeypatch, capsys):
    from benchmarks import stage1_step

    out = run_harness(stage1_step, ["--tiny", "--device", "cpu", "--batch", "1", "--warmup", "0", "--iters", "1",
                                    "--checkpointing", "layers", "--bf16-weights"], monkeypatch, capsys)
    assert out["parameter_dtype"] == "bfloat16" and out["settings"]["bf16_weights"] is True
    assert out["step"]["median_ms"] > 0
    with pytest.raises(SystemExit):  # refused before any model is built
        run_harness(stage1_step, ["--tiny", "--device", "cpu", "--bf16-weights", "--precision", "fp16"],
                    monkeypatch, capsys)
    assert "--bf16-weights replaces autocast" in capsys.readouterr().err


def test_stage1_step_drops_the_gradients_after_the_optimizer_step():
    """As in the trainer, no gradient outlives its step. Until session 11 the harness dropped them only before the
    next backward pass, so it held one fp32 copy of them through each forward pass (5.7 GiB at full size)."""
    import torch

    from benchmarks.stage1_step import train_step

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    x = torch.randn(8, 4)
    train_step(lambda: model(x).square().mean(), optimizer, params, torch.amp.GradScaler("cpu", enabled=False))
    assert all(p.grad is None for p in params)
    assert all(not torch.equal(p, b) for p, b in zip(params, before))  # the step did update the weights


def test_stage1_step_in_one_process_ddp(monkeypatch, capsys):
    import torch.distributed as dist

    from benchmarks import stage1_step

    out = run_harness(stage1_step, ["--tiny", "--device", "cpu", "--batch", "1", "--warmup", "0", "--iters", "1",
                                    "--precision", "fp32", "--checkpointing", "none", "--ddp", "bucket-view",
                                    "--short-query-kernels"],
                      monkeypatch, capsys)
    assert out["settings"]["ddp"] == "bucket-view" and out["step"]["median_ms"] > 0
    assert out["settings"]["short_query_kernels"] is True
    assert not dist.is_initialized()  # the harness leaves no process group behind


def test_policy_inference_times_eval_mode_and_reports_cudnn_exactness(monkeypatch, capsys):
    import torch

    from benchmarks import policy_step
    from policy_models.policy import VPPPolicy

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    modes = []
    predict = VPPPolicy.predict_action_chunk

    def recording_predict(self, *args, **kwargs):
        modes.append(self.training)
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(VPPPolicy, "predict_action_chunk", recording_predict)
    out = run_harness(policy_step, ["--tiny", "--device", "cpu", "--mode", "inference", "--warmup", "0", "--iters", "1",
                                    "--cudnn-benchmark"], monkeypatch, capsys)
    # timed as the evaluator and the server run it: a policy in eval mode (no mode switches inside the timed call)
    assert modes and not any(modes)
    assert out["settings"]["size"] == "tiny" and out["time"]["median_ms"] > 0
    assert 0 < out["time"]["host_median_ms"] <= out["time"]["median_ms"]  # the host part of each call
    # the CPU has no cuDNN, so the comparison with cuDNN's default choice must come out exact
    assert out["exactness"]["max_abs_diff_vs_default_cudnn_eager_same_generator"] == 0.0
    # compared with full float32 as well, which the CPU's matrix products are anyway
    assert out["exactness"]["max_abs_diff_vs_full_fp32_eager_same_generator"] == 0.0
    assert torch.backends.cudnn.benchmark is True  # the harness restores the setting it benchmarked with
    # TF32 for the float32 action head, the evaluator's default, unless the run asks for full float32
    assert out["settings"]["float32_matmul_precision"] == "high" and torch.get_float32_matmul_precision() == "high"
    out = run_harness(policy_step, ["--tiny", "--device", "cpu", "--mode", "inference", "--warmup", "0", "--iters", "1",
                                    "--float32-matmul-precision", "highest"], monkeypatch, capsys)
    assert out["settings"]["float32_matmul_precision"] == "highest"
    assert torch.get_float32_matmul_precision() == "highest"


def test_policy_inference_with_sdpa_perceiver_compares_with_the_explicit_softmax(monkeypatch, capsys):
    from benchmarks import policy_step
    from policy_models.policy import VPPPolicy
    from policy_models.video_former import PerceiverAttentionLayer

    kernels, switches = [], []
    forward, switch = PerceiverAttentionLayer.forward, VPPPolicy.use_sdpa_perceiver
    monkeypatch.setattr(PerceiverAttentionLayer, "forward",
                        lambda self, *a, **k: kernels.append(self.use_sdpa) or forward(self, *a, **k))
    monkeypatch.setattr(VPPPolicy, "use_sdpa_perceiver",
                        lambda self, enabled=True: switches.append(enabled) or switch(self, enabled))
    out = run_harness(policy_step, ["--tiny", "--device", "cpu", "--mode", "inference", "--warmup", "0", "--iters", "1",
                                    "--sdpa-perceiver"], monkeypatch, capsys)
    assert out["settings"]["sdpa_perceiver"] is True
    # timed with the switch on, then compared with the original's explicit softmax, and switched back on
    assert kernels[0] is True and False in kernels
    assert switches[0] is True and False in switches and switches[-1] is True
    assert 0 < out["exactness"]["max_abs_diff_vs_uncompiled_eager_same_generator"] < 1e-4


def test_device_timeline_separates_busy_time_from_idle_gaps():
    from benchmarks.common import device_timeline

    # (start_us, end_us, name): an overlapping pair, one long wait for the host, one short launch gap
    ops = [(0, 10, "a"), (12, 20, "b"), (15, 25, "c"), (225, 230, "d"), (231, 240, "e")]
    host = [(0, 250, "whole call"), (20, 222, "python between launches"), (100, 110, "a short host op")]
    timeline = device_timeline(ops, iters=1, host_ops=host)
    assert timeline["device_ops_per_call"] == 5
    assert timeline["busy_ms_per_call"] == pytest.approx(0.037)  # 10 + 13 (b..c merged) + 5 + 9 us
    assert timeline["idle_ms_per_call"] == pytest.approx(0.203)  # 2 + 200 + 1 us
    assert timeline["span_ms_per_call"] == pytest.approx(0.240)
    assert timeline["idle_gaps_per_call"]["over_100us"] == 1
    assert timeline["largest_gaps"][0] == {"us": 200.0, "after": "c", "before": "d", "host": [
        {"name": "python between launches", "us": 202.0}, {"name": "whole call", "us": 250.0}]}
    assert device_timeline([], iters=3) is None


def test_random_model_folders_feed_the_stage1_trainer(tmp_path, capsys):
    """The folders and latent clips the trainer timings start from load through the trainer's own code paths."""
    from benchmarks import random_model_folders
    from video_models.training import train
    from vpp_core.config import load_config

    random_model_folders.main(["--out", str(tmp_path / "w"), "--tiny", "--stage1-clips", "3", "--frames", "17"])
    made = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tiny = Path(__file__).resolve().parents[2] / "video_conf" / "tiny.yaml"
    overrides = [f"pretrained_model_path={made['svd']}", f"train_args.clip_model_path={made['clip']}",
                 f"train_args.dataset_dir={made['stage1_dataset_dir']}", "train_args.dataset=robo",
                 "train_args.prob=[1.0]", "max_train_steps=1", "train_args.first_validation_step=null",
                 "validation_steps=100", "save_final_checkpoint=false", "report_to=none", "mixed_precision=no",
                 f"output_dir={tmp_path / 'runs'}"]
    result = train(load_config(tiny, overrides))
    assert result.global_step == 1 and len(result.train_losses) == 1 and np.isfinite(result.train_losses[0])


def test_annotated_regions_are_not_counted_as_device_work():
    """The GPU-side span of an annotated host region (DDP's forward, the optimizer step) covers kernels and gaps
    alike: it is neither a kernel nor busy time."""
    from types import SimpleNamespace

    import torch

    from benchmarks.common import is_device_work

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    assert is_device_work(SimpleNamespace(device_type=cuda, is_user_annotation=False))
    assert not is_device_work(SimpleNamespace(device_type=cuda, is_user_annotation=True))
    assert not is_device_work(SimpleNamespace(device_type=cpu, is_user_annotation=False))


def test_chunk_stages_compose_to_the_eager_chunk():
    """The stages `--components` times, run in order on each other's outputs, are the chunk prediction itself."""
    import numpy as np
    import torch

    from benchmarks.chunk_components import chunk_stages
    from benchmarks.policy_step import build_random_policy, camera_images

    policy = build_random_policy(torch.device("cpu"), "tiny", torch.float32).eval()
    obs = {"rgb_obs": camera_images(policy, 2, np.random.default_rng(0))}
    torch.manual_seed(3)
    ref = policy.predict_action_chunk(obs, "open the drawer")
    torch.manual_seed(3)  # the stages draw the video noise, then the action noise, as the chunk does
    stages = chunk_stages(policy, obs, "open the drawer")
    assert [name for name, _, _ in stages] == ["preprocess", "vae_encode", "unet_inputs", "unet_pass", "video_former",
                                               "dit_encoder", "sampler"]
    _, sampler, (context, x) = stages[-1]
    with torch.no_grad():
        assert torch.equal(sampler(context, x), ref)
        # each stage reproduces the input the next one was given (but "unet_inputs", which draws fresh noise)
        for (name, fn, inputs), (_, _, next_inputs) in zip(stages[:-1], stages[1:]):
            if name != "unet_inputs":
                assert torch.equal(fn(*inputs), next_inputs[0]), name


def test_per_step_sampler_control_runs_every_decoder_step_on_its_own(monkeypatch):
    """`--per-step-sampler` (the measurement control for the planned sampler) calls the denoiser once per step and
    never plans, and gives the planned chunk's actions up to float rounding."""
    import numpy as np
    import torch

    from benchmarks.policy_step import build_random_policy, camera_images, use_per_step_sampler

    policy = build_random_policy(torch.device("cpu"), "tiny", torch.float32).eval()
    obs = {"rgb_obs": camera_images(policy, 1, np.random.default_rng(0))}
    planned = policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(3))
    steps, denoise = [], policy.model.denoise
    monkeypatch.setattr(policy.model, "denoise", lambda *args: steps.append(1) or denoise(*args))
    monkeypatch.setattr(policy.model, "plan", lambda *args: pytest.fail("the control must not plan"))
    use_per_step_sampler(policy)
    per_step = policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(3))
    assert len(steps) == policy.config.model.diffusion.num_sampling_steps
    torch.testing.assert_close(per_step, planned, rtol=1e-5, atol=1e-5)


class _RecordingStream:
    """Stands in for torch.cuda.Stream on the CPU: records which stream each U-Net slice was launched on."""

    current = "main"

    def __init__(self, device=None):
        self.name = f"side{id(self)}"

    def wait_stream(self, other):
        pass


def test_unet_streams_experiment_splits_the_batch_and_keeps_the_chunk(monkeypatch):
    """`--unet-streams 2` runs the U-Net pass on two slices of the camera batch, the second on a side stream, and
    joins them in the batch's order: the chunk equals the batched pass's up to float rounding."""
    import contextlib

    import numpy as np
    import torch

    from benchmarks.policy_step import build_random_policy, camera_images, split_unet_pass_over_streams

    policy = build_random_policy(torch.device("cpu"), "tiny", torch.float32).eval()
    obs = {"rgb_obs": camera_images(policy, 2, np.random.default_rng(0))}
    batched = policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(3))

    @contextlib.contextmanager
    def on_stream(stream):
        before, _RecordingStream.current = _RecordingStream.current, stream.name
        yield
        _RecordingStream.current = before

    monkeypatch.setattr(torch.cuda, "Stream", _RecordingStream)
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _RecordingStream())
    tvp, calls = policy.tvp_encoder, []
    inner = tvp.unet_pass
    tvp.__dict__["_compiled_partial_unet"] = lambda **kw: calls.append(
        (_RecordingStream.current, kw["sample"][:, 0, 0, 0, 0].tolist())) or inner(**kw)
    split_unet_pass_over_streams(tvp, 2)
    split = policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(3))
    # 2 cameras x batch 2 = 4 samples: the side stream gets the second half, the main stream the first
    assert [(stream.startswith("side"), len(rows)) for stream, rows in calls] == [(True, 2), (False, 2)]
    torch.testing.assert_close(split, batched, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not split"):
        tvp.unet_pass(sample=torch.zeros(3, 1, 1, 1, 1), timestep=None, encoder_hidden_states=torch.zeros(3),
                      added_time_ids=torch.zeros(3))


def test_policy_inference_components_and_autocast_experiment(monkeypatch, capsys):
    from benchmarks import policy_step

    out = run_harness(policy_step, ["--tiny", "--device", "cpu", "--mode", "inference", "--warmup", "0", "--iters", "1",
                                    "--components", "--inference-autocast", "bf16"], monkeypatch, capsys)
    parts = out["components"]
    assert parts["method"] == "eager_per_stage"
    stage_ms = [v for k, v in parts.items() if k.endswith("_ms") and k != "sum_ms"]
    assert len(stage_ms) == 7 and all(ms > 0 for ms in stage_ms)
    assert abs(parts["sum_ms"] - sum(stage_ms)) < 1e-9
    # bf16 autocast changes the action head's numbers; the exactness block measures against fp32 eager
    assert 0 < out["exactness"]["max_abs_diff_vs_eager_same_generator"] < 1


def test_kernel_launchers_attribute_each_kernel_to_the_ops_that_launched_it():
    from types import SimpleNamespace

    from benchmarks.common import kernel_launchers

    def op(name, shapes, *kernels):
        return SimpleNamespace(name=name, input_shapes=shapes,
                               kernels=[SimpleNamespace(name=k, duration=us) for k, us in kernels])

    transpose = "nchwToNhwcKernel" + "x" * 130  # listed under its first 120 characters, as kernel_profile cuts it
    events = [op("aten::cudnn_convolution", [[6, 320, 32, 32]], (transpose, 30.0), ("conv", 100.0)),
              op("aten::cudnn_convolution", [[6, 320, 16, 32, 32]], (transpose, 90.0)),
              op("aten::cudnn_convolution", [[6, 320, 32, 32]], (transpose, 30.0)),
              op("aten::add", None, ("elementwise", 5.0)),
              SimpleNamespace(name="a kernel event", input_shapes=[], kernels=[])]
    launchers = kernel_launchers(events, [transpose[:120], "conv", "unlisted"], iters=2)
    assert list(launchers) == [transpose[:120], "conv"]  # a name nothing launched is left out
    assert launchers[transpose[:120]] == [
        {"op": "aten::cudnn_convolution [[6, 320, 16, 32, 32]]", "ms_per_call": 0.045, "share": 0.6},
        {"op": "aten::cudnn_convolution [[6, 320, 32, 32]]", "ms_per_call": 0.03, "share": 0.4}]


def test_kernel_kinds_sum_every_kernel_by_its_kind():
    from benchmarks.common import kernel_kind, kernel_kinds

    # shortened from the names the H100 profiles list (docs/bench/session18_chunk_b1_profile_all.json)
    names = {
        "triton_poi_fused_convolution_native_group_norm_silu_150": "fused elementwise and norms (triton)",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true>": "layout transposes",
        "fmha_cutlassF_f32_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<float>": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64": "attention",
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x192x64": "convolutions",
        "sm90_xmma_wgrad_indexed_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolutions",
        "nvjet_sm90_hsh_128x256_64x4_2x1_v_bz_coopA_bias_TNN": "matrix products",
        "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x64_32x6_tn_align4>": "matrix products",
        "void cublasLt::splitKreduce_kernel<32, 16, int, float, float>": "matrix products",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata>":
            "multi-tensor (optimizer, gradient norms)",
        "void at::native::elementwise_kernel<128, 4, gpu_kernel_impl_nocast<direct_copy_kernel_cuda>>":
            "copies and fills",
        "void at::native::vectorized_elementwise_kernel<4, AUnaryFunctor<float, float, float>>": "other elementwise",
        "Memset (Device)": "copies and fills",
        "void some_unknown_kernel<float>": "other",
    }
    assert {name: kernel_kind(name) for name in names} == names

    kinds = kernel_kinds([("nvjet_sm90_a", 3000.0, 6), ("triton_poi_fused_gelu_mul_1", 1000.0, 4),
                          ("nvjet_sm90_b", 1000.0, 2), ("Memset (Device)", 10.0, 2)], iters=2)
    assert list(kinds) == ["matrix products", "fused elementwise and norms (triton)", "copies and fills"]
    assert kinds["matrix products"] == {"ms_per_call": 2.0, "launches_per_call": 4}
    assert kinds["fused elementwise and norms (triton)"] == {"ms_per_call": 0.5, "launches_per_call": 2}


def test_channels_last_activations_keep_the_unet_output():
    """The layout experiment changes where each convolution reads and writes, not what the U-Net computes."""
    import torch

    from benchmarks.stage1_step import build_unet, channels_last_activations
    from video_models.checkpointing import configure_gradient_checkpointing
    from vpp_core.config import load_config

    torch.manual_seed(0)
    unet = build_unet(load_config(Path(__file__).resolve().parents[2] / "video_conf" / "tiny.yaml").model.unet)
    inputs = (torch.randn(1, 4, 8, 8, 8), torch.tensor([10.0]), torch.randn(1, 5, unet.config.cross_attention_dim),
              torch.zeros(1, 3))
    reference = unet(*inputs).sample
    configure_gradient_checkpointing(unet, "attentions")
    channels_last_activations(unet)
    layouts = []
    for conv in (m for m in unet.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)):
        conv.register_forward_hook(lambda _m, args, _out: layouts.append(
            args[0].is_contiguous(memory_format=torch.channels_last if args[0].dim() == 4
                                  else torch.channels_last_3d)))
    output = unet(*inputs).sample
    output.square().mean().backward()
    assert layouts and all(layouts)
    # other convolution kernels sum in another order: both fp32 outputs lie about 1e-4 from a float64 pass here
    torch.testing.assert_close(output, reference, rtol=0, atol=5e-4)


def test_stage1_compile_settings_are_validated(monkeypatch, capsys):
    from benchmarks import stage1_step

    for argv, message in ((["--compile-memory-budget", "0.5"], "needs --compile"),
                          (["--compile", "--inductor-cpp-wrapper"],
                           "--inductor-cpp-wrapper needs --compile --compile-scope layers"),
                          (["--compile", "--compile-memory-budget", "2"], "must be in [0, 1]"),
                          (["--compile", "--compile-scope", "layers", "--ddp-graph-cuts"],
                           "--ddp-graph-cuts needs --compile --compile-scope layers and --ddp"),
                          (["--compile", "--channels-last-activations"],
                           "--channels-last-activations needs --compile --compile-scope layers")):
        with pytest.raises(SystemExit):
            run_harness(stage1_step, ["--tiny", "--device", "cpu", *argv], monkeypatch, capsys)
        assert message in capsys.readouterr().err


@pytest.fixture()
def sdpa_switches():
    """The harness's --sdpa-backends sets process-wide switches; put them back afterwards."""
    import torch

    from benchmarks.common import SDPA_BACKENDS

    getters = {"cudnn": torch.backends.cuda.cudnn_sdp_enabled, "flash": torch.backends.cuda.flash_sdp_enabled,
               "efficient": torch.backends.cuda.mem_efficient_sdp_enabled, "math": torch.backends.cuda.math_sdp_enabled}
    before = {name: get() for name, get in getters.items()}
    yield getters
    for name, enable in SDPA_BACKENDS.items():
        enable(before[name])


def test_policy_train_from_latents_with_short_query_kernels(monkeypatch, capsys, sdpa_switches):
    from diffusers import AutoencoderKLTemporalDecoder

    from benchmarks import policy_step

    encodes = []
    encode = AutoencoderKLTemporalDecoder.encode
    monkeypatch.setattr(AutoencoderKLTemporalDecoder, "encode", lambda self, *a, **k: encodes.append(1) or
                        encode(self, *a, **k))
    out = run_harness(policy_step, ["--tiny", "--device", "cpu", "--mode", "train", "--batch", "2", "--warmup", "0",
                                    "--iters", "1", "--latent-inputs", "--short-query-kernels", "--sync-report",
                                    "--sdpa-backends", "flash,math"], monkeypatch, capsys)
    assert out["time"]["median_ms"] > 0 and out["samples_per_s"] > 0
    assert encodes == []  # latent camera inputs: the step never runs the autoencoder
    assert out["host_syncs"] is None  # nothing is asynchronous on the CPU
    assert {name: get() for name, get in sdpa_switches.items()} == {"cudnn": False, "flash": True, "efficient": False,
                                                                   "math": True}
    with pytest.raises(SystemExit, match="--sdpa-backends"):
        run_harness(policy_step, ["--tiny", "--device", "cpu", "--sdpa-backends", "flash,fast"], monkeypatch, capsys)


def test_attention_backends_times_every_attention_call_of_the_unet(monkeypatch, capsys):
    from diffusers.models.attention_processor import Attention

    from benchmarks import attention_backends
    from video_models.builders import build_unet
    from vpp_core.config import load_config

    out = run_harness(attention_backends, ["--tiny", "--device", "cpu", "--stage1", "--batch", "1", "--iters", "1"],
                      monkeypatch, capsys)
    layers = sum(isinstance(m, Attention) for m in build_unet(load_config("video_conf/tiny.yaml").model.unet).modules())
    assert sum(row["calls_per_pass"] for row in out["calls"]) == layers  # each attention layer once per forward
    assert {16} <= {row["query"][2] for row in out["calls"]}  # the 16-frame temporal attention is among them
    for row in out["calls"]:
        assert row["ms_per_call"]["math"] > 0 and row["ms_per_call"]["cudnn"] is None  # no cuDNN on the CPU
        assert row["fastest"] in ("flash", "efficient", "math")
    assert out["ms_per_pass"]["math"] > 0 and "cudnn" not in out["ms_per_pass"]
    assert out["settings"]["timed"] == "forward + backward"


def test_unet_flops_counts_by_operator_kind(monkeypatch, capsys):
    import torch
    import torch.nn.functional as F

    from benchmarks import unet_flops

    linear, conv = torch.nn.Linear(4, 8), torch.nn.Conv2d(2, 3, kernel_size=3, padding=1)
    q = torch.randn(1, 2, 5, 4)

    def work():
        linear(torch.randn(3, 4))  # 2 * 3 * 4 * 8
        conv(torch.randn(1, 2, 6, 6))  # 2 * 36 positions * 3 out * 2 in * 9
        F.scaled_dot_product_attention(q, q, q)  # QK^T and AV: 2 * (2 * 2 heads * 5 * 5 * 4)

    assert unet_flops.count_by_kind(work) == {"linear": 192.0, "convolution": 3888.0, "attention": 800.0}
    out = run_harness(unet_flops, ["--tiny", "--pass", "partial", "--batch", "2", "--latent", "8"], monkeypatch, capsys)
    assert out["settings"]["sample"] == [2, 16, 8, 8, 8]
    assert set(out["share_by_kind"]) >= {"linear", "convolution", "attention"}
    assert abs(sum(out["share_by_kind"].values()) - 1) < 1e-9 and out["forward_tflop"] > 0


@pytest.mark.parametrize("eager", [False, True])
def test_agent_step_times_the_agent_on_a_saved_checkpoint(eager, monkeypatch, capsys):
    """The agent loads a saved random checkpoint through the fast path (or, with --eager, a plain load_policy policy
    as before session 15) and returns eight absolute 38-D targets per call."""
    from benchmarks import agent_step
    from policy_models.policy import VPPPolicy

    fast_path = []
    original = VPPPolicy.use_fastest_exact_inference
    monkeypatch.setattr(VPPPolicy, "use_fastest_exact_inference",
                        lambda self, **kw: fast_path.append(1) or original(self, **kw))
    argv = ["--device", "cpu", "--warmup", "0", "--iters", "2", "--frame", "48x64"] + (["--eager"] if eager else [])
    out = run_harness(agent_step, argv, monkeypatch, capsys)
    assert out["targets_shape"] == [8, 38] and out["time"]["iters"] == 2 and out["chunks_per_s"] > 0
    assert out["settings"]["eager"] is eager and out["settings"]["frame"] == [48, 64]
    assert fast_path == ([] if eager else [1])
    assert out["settings"]["float32_matmul_precision"] == ("highest" if eager else "high")
    assert out["settings"]["compile"] is None and out["agent_build_s"] > 0  # the agent's "auto": CUDA only
    assert out["settings"]["fused_decoder"] is False
    with pytest.raises(SystemExit):
        agent_step.main(["--device", "cpu", "--frame", "480"])
    assert "--frame must be HEIGHTxWIDTH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        agent_step.main(["--device", "cpu", "--fused-decoder"])
    assert "needs --device cuda" in capsys.readouterr().err


def test_random_checkpoint_refuses_an_unknown_embodiment_or_half_the_folders(tmp_path):
    from benchmarks.random_checkpoint import write_random_checkpoint

    with pytest.raises(ValueError, match="no model config for embodiment 'franka'"):
        write_random_checkpoint(tmp_path, "franka")
    with pytest.raises(ValueError, match="both the video model and the CLIP folder"):
        write_random_checkpoint(tmp_path, "xbot", video_model_path="W/svd")
    assert not any(tmp_path.iterdir())  # nothing written before the checks


def test_decoder_steps_harness_needs_cuda(monkeypatch, capsys):
    """The fused decoder's harness times Triton kernels, which only run on CUDA: it says so instead of timing less."""
    from benchmarks import decoder_steps

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["decoder_steps.py", "--batch", "1"])
    with pytest.raises(SystemExit):
        decoder_steps.main()
    assert "need a CUDA device" in capsys.readouterr().err


def test_inductor_config_items_are_checked_then_applied_before_compiling():
    """`--inductor-config KEY=VALUE` (every GPU harness): unknown keys, missing '=' and values that are not Python
    literals stop the harness at once; valid ones are set in torch._inductor.config by configure_backends."""
    from argparse import Namespace

    import torch
    from torch._inductor import config as inductor_config

    from benchmarks.common import configure_backends, inductor_settings

    assert inductor_settings(["combo_kernels=True", "triton.max_tiles=3", "max_fusion_size=32"]) == {
        "combo_kernels": True, "triton.max_tiles": 3, "max_fusion_size": 32}
    for items, message in ((["combo_kernels"], "expected KEY=VALUE"), (["combo_kernel=True"], "has no 'combo_kernel'"),
                           (["combo_kernels=yes"], "must be a Python literal")):
        with pytest.raises(SystemExit, match=message):
            inductor_settings(items)
    saved = inductor_config.get_config_copy()
    try:
        assert inductor_config.combo_kernels is False and inductor_config.triton.max_tiles != 3
        configure_backends(Namespace(inductor_config=["combo_kernels=True", "triton.max_tiles=3"],
                                     float32_matmul_precision=torch.get_float32_matmul_precision(),
                                     cudnn_benchmark=torch.backends.cudnn.benchmark, sdpa_backends=None))
        assert inductor_config.combo_kernels is True and inductor_config.triton.max_tiles == 3
    finally:
        inductor_config.load_config(saved)
    assert inductor_config.combo_kernels is False


def _scaling_run(scaling, argv: list[str], capsys) -> dict:
    out = scaling.main(argv)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out, default=str))
    for n in ("1", "2"):
        run = out["runs"][n]
        assert run["finished"], run.get("output_tail")
        assert run["windows"] == 2 and len(run["samples_per_s_per_window"]) == 2 and run["samples_per_s"] > 0
        assert run["samples_per_s_per_process"] == pytest.approx(run["samples_per_s"] / int(n))
    assert out["runs"]["1"]["scaling_efficiency"] == pytest.approx(1.0) and out["runs"]["2"]["scaling_efficiency"] > 0
    return out


@pytest.mark.parametrize("stage", [1, 2])
def test_trainer_scaling_runs_each_trainer_with_one_and_two_processes(stage, tmp_path, capsys):
    """The scaling harness on the CPU (gloo), on the tiny configs: both runs of each stage finish, their log windows
    after the skipped one give the rates, and no validation, sample videos or (stage 1) checkpoints are written."""
    from benchmarks import random_model_folders, trainer_scaling
    from policy_models.datasets.synthetic import SyntheticCalvinSpec, write_synthetic_calvin

    work = tmp_path / "w"
    random_model_folders.main(["--out", str(work), "--tiny", "--stage1-clips", "4", "--frames", "17"])
    capsys.readouterr()
    repo = Path(__file__).resolve().parents[2]
    argv = ["--stage", str(stage), "--work", str(work), "--processes", "1,2", "--steps", "3", "--log-every", "1",
            "--skip-windows", "1", "--cpu", "--timeout", "300"]
    if stage == 1:
        argv += ["--config", str(repo / "video_conf" / "tiny.yaml"), "--set", "mixed_precision=no"]
    else:
        data = tmp_path / "calvin"
        write_synthetic_calvin(data, SyntheticCalvinSpec(episodes=2, episode_len=64, segment_len=32, segment_stride=16))
        argv += ["--data", str(data), "--config", str(repo / "policy_conf" / "tiny_calvin.yaml")]
    out = _scaling_run(trainer_scaling, argv, capsys)
    written = {n: sorted(p.name for p in Path(run["run_dir"]).iterdir()) for n, run in out["runs"].items()}
    if stage == 1:
        assert all(names == ["config.yaml", "log.txt", "metrics.jsonl", "samples"] for names in written.values())
        assert all(not any((Path(run["run_dir"]) / "samples").iterdir()) for run in out["runs"].values())
    else:  # the stage-2 trainer always saves its last step
        assert all("checkpoints" in names and "metrics.jsonl" in names for names in written.values())
        for run in out["runs"].values():
            rows = [json.loads(line) for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            assert not any("val_mse" in row for row in rows)
        # a second timing run in the same work folder starts from scratch, not refused by the first run's checkpoint
        again = trainer_scaling.main([*argv[:5], "1", *argv[6:]])
        capsys.readouterr()
        rows = (Path(again["runs"]["1"]["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert again["runs"]["1"]["finished"] and [json.loads(row)["step"] for row in rows] == [1, 2, 3]


def test_trainer_scaling_window_rates_and_missing_inputs(tmp_path):
    from benchmarks import trainer_scaling

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "samples_per_s": 1.0}, {"step": 2, "val_loss": 0.5}, {"step": 2, "samples_per_s": 4.0},
            {"step": 3, "samples_per_s": 2.0, "peak_memory_gib": 3.0}, {"step": 4, "samples_per_s": 3.0}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rates = trainer_scaling.window_rates(metrics, skip_windows=1)
    assert rates["windows"] == 3 and rates["samples_per_s"] == 3.0 and rates["rank0_peak_memory_gib"] == 3.0
    with pytest.raises(ValueError, match="4 logged windows, none left after skipping 4"):
        trainer_scaling.window_rates(metrics, skip_windows=4)
    with pytest.raises(SystemExit):
        trainer_scaling.main(["--stage", "1", "--work", str(tmp_path / "nothing")])
    for folder in ("svd", "clip"):
        (tmp_path / folder).mkdir()
    with pytest.raises(SystemExit):  # stage 2 without a CALVIN-format root
        trainer_scaling.main(["--stage", "2", "--work", str(tmp_path), "--data", str(tmp_path / "nothing")])
    finished, tail = trainer_scaling.run_trainer("step1_train_svd.py", 2, tmp_path / "no.yaml", [], True, timeout=0.5)
    assert not finished and tail.startswith("timed out after 0.5 s")  # the processes were stopped, not waited for
