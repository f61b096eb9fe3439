"""The chunk-prediction refactor behind the CUDA-graph modes keeps the eager path exact, and the mode / compile
switches validate their values (CPU; the graphs themselves are checked in test_cuda_graph_gpu.py)."""

import copy

import pytest
import torch
from einops import rearrange

from policy_models.cuda_graph import GraphCache, input_signature, validate_mode
from policy_models.datasets.base import preprocess_rgb
from policy_models.diffusion.samplers import get_sampler, get_sigmas

from .helpers import calvin_obs


@torch.no_grad()
def _reference_chunk(policy, obs, texts, generator):
    """predict_action_chunk spelled out from the low-level pieces, in the original order of random draws."""
    tvp, cams = policy.tvp_encoder, policy.embodiment.cameras
    imgs = [preprocess_rgb(torch.from_numpy(obs["rgb_obs"][c]), tvp.resolution) for c in cams]
    inputs = tvp.prepare_unet_inputs(torch.cat(imgs), texts * len(cams), generator=generator)
    feats = rearrange(tvp.partial_unet(**inputs), "b f c h w -> b f (h w) c")
    feats = feats[:, : policy.config.model.former.num_time_embeds]
    feats = torch.cat(feats.split(len(texts), dim=0), dim=2).float()
    tokens = policy.Video_Former(feats)
    goal = policy.goal_encoder(texts)
    d, e = policy.config.model.diffusion, policy.embodiment
    x = torch.randn(len(texts), e.chunk_length, e.action_dim, generator=generator) * d.sigma_max
    context = policy.model.encode(tokens, goal)
    sigmas = get_sigmas(d.noise_scheduler, d.num_sampling_steps, d.sigma_min, d.sigma_max)
    plan = policy.model.plan(context, sigmas[:-1])
    return get_sampler(d.sampler_type)(lambda x_t, s, i: policy.model.denoise_planned(plan, i, x_t, s), x, sigmas)


def test_eager_chunk_is_bitwise_the_reference_composition(policy):
    obs, texts = calvin_obs(batch=2), ["open the drawer", "push the red block"]
    ref = _reference_chunk(policy, obs, texts, torch.Generator().manual_seed(4))
    for mode in ("off", "chunk"):  # graph modes are ignored on the CPU
        policy.cuda_graph = mode
        out = policy.predict_action_chunk(obs, texts, generator=torch.Generator().manual_seed(4), cache_text=False)
        assert torch.equal(out, ref), mode
        assert len(policy._graphs) == 0
    other = policy.predict_action_chunk(obs, texts, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(other, ref)


def test_explicit_noise_and_default_generator_paths(policy):
    obs, text = calvin_obs(batch=1), "open the drawer"
    noise = torch.randn(2, 16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    a = policy.predict_action_chunk(obs, text, generator=torch.Generator().manual_seed(2), noise=noise)
    c = policy.predict_action_chunk(obs, text, generator=torch.Generator().manual_seed(2), noise=noise * 0.5)
    assert not torch.allclose(a, c)
    torch.manual_seed(11)
    d = policy.predict_action_chunk(obs, text)
    e = policy.predict_action_chunk(obs, text)
    torch.manual_seed(11)
    assert torch.equal(policy.predict_action_chunk(obs, text), d) and not torch.equal(d, e)


def test_prepare_images_matches_the_dataset_transform(policy):
    raw = calvin_obs(batch=2)["rgb_obs"]["rgb_gripper"]
    ref = preprocess_rgb(torch.from_numpy(raw), policy.resolution)
    assert torch.equal(policy.prepare_images(raw), ref)
    assert torch.equal(policy.prepare_images(raw[0]), ref[:1])
    with pytest.raises(ValueError, match="different batch sizes"):
        policy.predict_action_chunk({"rgb_obs": {"rgb_static": raw, "rgb_gripper": raw[:1]}}, "x")
    with pytest.raises(ValueError, match="instructions"):
        policy.predict_action_chunk({"rgb_obs": {"rgb_static": raw, "rgb_gripper": raw}}, ["a", "b", "c"])


def test_mode_setter_validates_and_keeps_the_old_switch(policy):
    assert policy.cuda_graph == "off" and policy.cuda_graph_sampler is False
    for mode in ("sampler", "chunk", "off"):
        policy.cuda_graph = mode
        assert policy.cuda_graph == mode
        assert policy.cuda_graph_sampler is (mode != "off")
    for bad in ("on", "CHUNK", True, None, 1):
        with pytest.raises(ValueError, match="cuda_graph must be one of"):
            policy.cuda_graph = bad
    assert policy.cuda_graph == "off"
    policy.cuda_graph_sampler = True
    assert policy.cuda_graph == "sampler"
    policy.cuda_graph_sampler = False
    assert policy.cuda_graph == "off"
    policy.cuda_graph = "chunk"
    assert not any("graph" in k for k in policy.state_dict())
    assert copy.deepcopy(policy).cuda_graph == "chunk"
    assert validate_mode("sampler") == "sampler"


def test_compile_modes_that_record_cuda_graphs_are_refused_with_the_chunk_graph(policy):
    policy.cuda_graph = "chunk"
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(ValueError, match="own CUDA graphs"):
            policy.compile_video_model(mode)
    assert policy.video_compile_mode is None
    policy.cuda_graph = "sampler"
    policy.compile_video_model("reduce-overhead", backend="eager")
    with pytest.raises(ValueError, match="own CUDA graphs"):
        policy.cuda_graph = "chunk"
    assert policy.cuda_graph == "sampler"


def test_compiled_vae_and_unet_passes_are_used_and_can_be_turned_off(policy):
    obs = calvin_obs(batch=1)
    ref = policy.predict_action_chunk(obs, "x", generator=torch.Generator().manual_seed(0))
    traced = []  # the source of every graph the backend was given
    tvp = policy.tvp_encoder
    passes = (tvp.encode_images, tvp.partial_unet)

    def backend(gm, example_inputs):  # a torch.compile backend that records its use and runs the traced graph
        traced.append(gm.code)
        return gm.forward

    def conv_weights(module):
        return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)]

    policy.compile_video_model("default", backend=backend)
    assert policy.video_compile_mode == "default"
    for weight in conv_weights(tvp.unet) + conv_weights(tvp.vae):  # stored channels-last while compiled
        layout = torch.channels_last if weight.dim() == 4 else torch.channels_last_3d
        assert weight.is_contiguous(memory_format=layout)
    assert any(not w.is_contiguous() for w in conv_weights(tvp.unet) if w.dim() == 5)
    out = policy.predict_action_chunk(obs, "x", generator=torch.Generator().manual_seed(0))
    assert any("quant_conv" in code for code in traced), "the compiled VAE encode was not used"
    assert any("conv_in" in code and "up_blocks" in code for code in traced), "the compiled U-Net pass was not used"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    policy.compile_video_model(None)
    assert policy.video_compile_mode is None and (tvp.vae_pass, tvp.unet_pass) == passes
    assert all(w.is_contiguous() for w in conv_weights(tvp.unet) + conv_weights(tvp.vae))
    n = len(traced)
    assert torch.equal(policy.predict_action_chunk(obs, "x", generator=torch.Generator().manual_seed(0)), ref)
    assert len(traced) == n


def test_graph_cache_keys_on_input_shapes_and_is_not_copied():
    assert input_signature([torch.zeros(2, 3), None]) == (((2, 3), torch.float32, torch.device("cpu")), None)
    cache = GraphCache(size=2)
    cache.graphs["k"] = object()
    assert len(cache) == 1 and len(copy.deepcopy(cache)) == 0
    cache.clear()
    assert len(cache) == 0


def test_graph_paths_with_faked_capture_equal_eager(policy, monkeypatch):
    """The graph plumbing (host-side inputs, static buffers refreshed per call, cache keys, output copies) on the CPU,
    with capture / replay replaced by eager re-runs of the captured function on the static buffers."""
    from policy_models.cuda_graph import StaticGraph

    captured = []

    def fake_capture(self, warmup):
        captured.append(len(self.static_inputs))
        self.output = self.fn(*self.static_inputs)

    monkeypatch.setattr(StaticGraph, "_capture", fake_capture)
    monkeypatch.setattr(StaticGraph, "_replay", lambda self: self.output.copy_(self.fn(*self.static_inputs)))
    monkeypatch.setattr(type(policy), "_graphable", lambda self, t: not self.training)
    first, second = calvin_obs(batch=1, seed=0), calvin_obs(batch=1, seed=1)

    def chunk(obs, text, seed):
        return policy.predict_action_chunk(obs, text, generator=torch.Generator().manual_seed(seed))

    refs = [chunk(first, "open the drawer", 0), chunk(second, "lift the block", 1)]
    policy.cuda_graph = "chunk"
    outs = [chunk(first, "open the drawer", 0), chunk(second, "lift the block", 1)]
    n_inputs = len(policy.embodiment.cameras) + 5  # cameras, text tokens, goal, state, video noise, action noise
    assert captured == [n_inputs] and len(policy._graphs) == 1  # one capture, the second call replays it
    assert all(torch.equal(o, r) for o, r in zip(outs, refs))
    assert not torch.equal(outs[0], outs[1])
    policy.cuda_graph = "sampler"
    assert len(policy._graphs) == 0
    assert torch.equal(chunk(first, "open the drawer", 0), refs[0])
    assert torch.equal(chunk(second, "lift the block", 1), refs[1])
    assert captured[1:] == [2] and len(policy._graphs) == 1  # (context, x)


def test_fastest_exact_inference_is_eager_on_the_cpu(policy):
    policy.cuda_graph = "sampler"
    policy.use_fastest_exact_inference()
    assert policy.cuda_graph == "off"


def test_cudnn_benchmark_is_opt_in_and_cuda_only(policy, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    policy.use_fastest_exact_inference(cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is False  # the CPU has no cuDNN: the process setting is left alone
    monkeypatch.setattr(type(policy), "device", property(lambda self: torch.device("cuda")))
    policy.use_fastest_exact_inference()
    assert policy.cuda_graph == "chunk" and torch.backends.cudnn.benchmark is False
    policy.use_fastest_exact_inference(cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is True
    policy.cuda_graph = "off"


def _compile_head_recording(policy) -> list[str]:
    """compile_action_head with a backend that records the code of every traced graph and runs it as it is."""
    traced = []

    def backend(gm, example_inputs):
        traced.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    policy.compile_action_head("default", backend=backend)
    return traced


def test_compiled_action_head_runs_the_former_encoder_and_sampler_steps(policy):
    """compile_action_head sends the Video Former, the DiT encoder and every decoder step through torch.compile
    (here a recording backend that runs the traced graphs as they are, so the chunk stays bit-identical)."""
    obs = calvin_obs(batch=1)
    ref = policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(2))
    traced = _compile_head_recording(policy)
    try:
        assert policy.action_head_compile_mode == "default"
        out = policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(2))
        assert torch.equal(out, ref)
        # the Video Former (its time embedding), the DiT encoder (the goal's embedding), the decoder step (sigma's)
        for weight in ("time_pos_emb", "lang_emb", "sigma_emb"):
            assert any(weight in code for code in traced), f"no compiled graph reads {weight}"
        assert not any("compiled" in k for k in policy.state_dict())  # checkpoints keep their keys
        policy.cuda_graph = "chunk"
        with pytest.raises(ValueError, match="own CUDA graphs"):
            policy.compile_action_head("reduce-overhead")
    finally:
        policy.cuda_graph = "off"
        policy.compile_for_inference(None)
    assert policy.action_head_compile_mode is None and policy.video_compile_mode is None
    n = len(traced)
    assert torch.equal(policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(2)),
                       ref)
    assert len(traced) == n  # eager again


def test_compiled_action_head_trains_through_the_former_and_the_dit_loss(policy):
    """In training, compile_action_head sends the Video Former and the DiT's loss (forward, and so backward)
    through torch.compile; with a recording backend that runs the traced graphs as they are, loss and gradients
    equal eager's exactly."""
    policy.train()
    g = torch.Generator().manual_seed(0)
    batch = {"rgb_obs": {c: torch.rand(2, 1, 3, 64, 64, generator=g) * 2 - 1 for c in ("rgb_static", "rgb_gripper")},
             "lang_text": ["open the drawer", "turn on the led"], "actions": torch.rand(2, 10, 7, generator=g) * 2 - 1}

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy.zero_grad(set_to_none=True)
        torch.manual_seed(3)  # dropout draws
        loss, _ = policy.compute_loss(batch, generator=torch.Generator().manual_seed(1))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in policy.named_trainable_parameters()}

    ref_loss, ref_grads = loss_and_grads()
    traced = _compile_head_recording(policy)
    try:
        loss, grads = loss_and_grads()
    finally:
        policy.compile_action_head(None)
    # the Video Former (its time embedding) and the DiT loss (the noise level's embedding)
    for weight in ("time_pos_emb", "sigma_emb"):
        assert any(weight in code for code in traced), f"no compiled graph reads {weight}"
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)
