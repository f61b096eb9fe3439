"""The inference fast paths (cached scheduler constants, per-instruction text caches, deduplicated text encoding)
give the same outputs as the plain path, and are never used in training."""


import torch

from .helpers import calvin_obs


def test_scheduler_constants_are_bitwise_the_schedulers(policy):
    tvp = policy.tvp_encoder
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, tvp.resolution, tvp.resolution, generator=g) * 2 - 1
    noise = tvp.make_noise(2, generator=g)
    for _ in range(2):  # first call fills the cache, second uses it
        inputs = tvp.prepare_unet_inputs(images, ["a", "b"], noise=noise)
        sched = tvp.scheduler
        sched.set_timesteps(tvp.num_inference_steps, device=tvp.device)
        timestep = sched.timesteps[0]
        ref = sched.scale_model_input(noise.to(tvp.dtype) * sched.init_noise_sigma, timestep)
        assert torch.equal(inputs["timestep"], timestep)
        assert torch.equal(inputs["sample"][:, :, :4], ref)
        latents = tvp.encode_images(images).unsqueeze(1).repeat(1, tvp.num_frames, 1, 1, 1)
        assert torch.equal(inputs["sample"][:, :, 4:], latents)
        assert inputs["added_time_ids"].tolist() == [[4.0, 127.0, 0.0]] * 2


def test_text_cache_dedups_and_matches_plain_encoding(policy, monkeypatch):
    tvp = policy.tvp_encoder
    texts = ["open the drawer", "open the drawer", "lift the block", "open the drawer"]
    plain = tvp.encode_text(texts)
    calls = []
    original = tvp._encode_text_uncached
    monkeypatch.setattr(tvp, "_encode_text_uncached", lambda t: calls.append(list(t)) or original(t))
    with torch.no_grad():
        cached = tvp.encode_text(texts, cache=True)
        again = tvp.encode_text(texts, cache=True)
    assert calls == [["open the drawer", "lift the block"]]  # each distinct string once, then from the cache
    torch.testing.assert_close(cached, plain, rtol=1e-6, atol=1e-6)
    assert torch.equal(again, cached)
    # the cache holds exactly the plain path's rows for the deduplicated batch
    unique = tvp.encode_text(["open the drawer", "lift the block"])
    assert torch.equal(cached, unique[[0, 0, 1, 0]])
    # with grad enabled (training) the cache is bypassed
    calls.clear()
    tvp.encode_text(texts, cache=True)
    assert len(calls) == 1 and len(calls[0]) == 4


def test_goal_cache_matches_plain_and_is_bounded(policy, monkeypatch):
    goal = policy.goal_encoder
    texts = ["open the drawer", "lift the block", "open the drawer"]
    plain = goal(texts)
    cached = goal(texts, cache=True)
    torch.testing.assert_close(cached, plain, rtol=1e-6, atol=1e-6)
    assert torch.equal(cached, goal(["open the drawer", "lift the block"])[[0, 1, 0]])
    assert torch.equal(cached[0], cached[2]) and cached.shape == plain.shape and cached.dtype == torch.float32
    goal.text_cache.size = 2
    goal(["c"], cache=True)
    kept = list(goal.text_cache.rows)
    assert kept == ["open the drawer", "c"] or kept == ["lift the block", "c"]
    assert len(goal.text_cache.rows) == 2


def test_caches_invalidate_on_dtype_change(policy):
    tvp, goal = policy.tvp_encoder, policy.goal_encoder
    with torch.no_grad():
        tvp.encode_text(["x"], cache=True)
    goal(["x"], cache=True)
    policy.tvp_encoder.text_encoder.to(torch.float64)
    try:
        with torch.no_grad():
            t = tvp.encode_text(["x"], cache=True)
        g = goal(["x"], cache=True)
        assert len(tvp.text_cache.rows) == 1 and tvp.text_cache.rows["x"].dtype == tvp.dtype
        assert goal.text_cache.key[1] == torch.float64 and g.dtype == torch.float32
        assert torch.equal(g, goal(["x"]))  # recomputed with the float64 tower
        torch.testing.assert_close(t, tvp.encode_text(["x"]), rtol=0, atol=0)
    finally:
        policy.tvp_encoder.text_encoder.to(torch.float32)


def test_predict_action_chunk_cached_equals_plain(policy):
    obs = calvin_obs(batch=2)
    texts = ["open the drawer", "push the block"]
    plain = policy.predict_action_chunk(obs, texts, generator=torch.Generator().manual_seed(0), cache_text=False)
    assert not policy.tvp_encoder.text_cache.rows and not policy.goal_encoder.text_cache.rows
    first = policy.predict_action_chunk(obs, texts, generator=torch.Generator().manual_seed(0))
    second = policy.predict_action_chunk(obs, texts, generator=torch.Generator().manual_seed(0))
    assert set(policy.tvp_encoder.text_cache.rows) == set(texts)
    assert set(policy.goal_encoder.text_cache.rows) == set(texts)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-5)


def test_compute_loss_does_not_use_the_caches(policy):
    res = policy.resolution
    batch = {"rgb_obs": {c: torch.rand(2, 1, 3, res, res) * 2 - 1 for c in policy.embodiment.cameras},
             "lang_text": ["open the drawer", "open the drawer"], "actions": torch.rand(2, 10, 7) * 2 - 1}
    policy.train()
    loss, _ = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    policy.eval()
    assert torch.isfinite(loss)
    assert not policy.tvp_encoder.text_cache.rows and not policy.goal_encoder.text_cache.rows


def test_cuda_graph_sampler_is_opt_in_and_ignored_on_cpu(policy):
    assert policy.cuda_graph_sampler is False
    obs = calvin_obs()
    ref = policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(0))
    policy.cuda_graph_sampler = True
    out = policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, ref) and not policy._graphs
    assert "_cuda_graph_sampler" not in policy.state_dict()


def test_predict_action_chunk_skips_mode_switches_in_eval_mode(policy, monkeypatch):
    """A mode switch walks every submodule (~29 ms of host time per switch at full size on a CPU core), so an eval-mode
    policy is not switched at all; a training-mode one is switched to eval for the chunk and back afterwards."""
    obs = calvin_obs(batch=1)
    switches = []
    original = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: switches.append(mode) or original(self, mode))
    policy.eval()
    switches.clear()
    policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(0))
    assert switches == []
    policy.train()
    switches.clear()
    policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(0))
    assert switches and switches[0] is False and policy.training
    assert not policy.tvp_encoder.unet.training  # the frozen video model stays in eval mode either way


def test_tvp_encoder_device_and_dtype_follow_the_unet(policy):
    tvp = policy.tvp_encoder
    weight = next(tvp.unet.parameters())
    assert tvp.device == weight.device == tvp.unet.device and tvp.dtype == weight.dtype == tvp.unet.dtype
