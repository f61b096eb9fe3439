"""Whole-chunk and sampler CUDA graphs on the tiny policies (run with `pytest -m gpu tests/policy`): replays are
bit-identical to eager chunks given the same noise / random state, and each replay draws fresh noise."""

import copy

import pytest
import torch

from .helpers import calvin_obs

pytestmark = pytest.mark.gpu

TEXT = "open the drawer"


def _on_cuda(policy):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return copy.deepcopy(policy).cuda().eval()


@pytest.fixture(scope="module")
def gpu_policy(tiny_policy):
    return _on_cuda(tiny_policy)


def _two_calls(policy, seed, obs, text):
    torch.manual_seed(seed)
    return policy.predict_action_chunk(obs, text), policy.predict_action_chunk(obs, text)


def test_chunk_graph_replays_the_eager_random_stream(gpu_policy):
    p, obs = gpu_policy, calvin_obs()
    p.cuda_graph = "off"
    e1, e2 = _two_calls(p, 0, obs, TEXT)
    assert not torch.allclose(e1, e2)
    p.cuda_graph = "chunk"
    p.predict_action_chunk(obs, TEXT)  # captures (after eager warm-ups, which draw from the generator)
    assert len(p._graphs) == 1
    g1, g2 = _two_calls(p, 0, obs, TEXT)
    assert len(p._graphs) == 1  # replays, no new capture
    # the noise is drawn inside the graph from the default CUDA generator: same seed, same chunks as eager, and each
    # replay advances the generator exactly as an eager call does
    assert torch.equal(g1, e1) and torch.equal(g2, e2)
    g3, _ = _two_calls(p, 1, obs, TEXT)
    assert not torch.allclose(g3, g1)
    # new inputs reach the graph (static buffers refreshed on every call)
    other = calvin_obs(seed=5)
    p.cuda_graph = "off"
    ref, _ = _two_calls(p, 2, other, "lift the block")
    p.cuda_graph = "chunk"
    p.predict_action_chunk(obs, TEXT)
    out, _ = _two_calls(p, 2, other, "lift the block")
    assert torch.equal(out, ref)


@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
def test_chunk_graph_with_an_explicit_generator_equals_eager(gpu_policy, gen_device):
    p, obs, texts = gpu_policy, calvin_obs(batch=2, seed=1), ["open the drawer", "push the block"]
    p.cuda_graph = "off"
    ref = p.predict_action_chunk(obs, texts, generator=torch.Generator(gen_device).manual_seed(3))
    p.cuda_graph = "chunk"
    for _ in range(2):  # capture, then replay: the noise is drawn outside with the generator, as eagerly
        out = p.predict_action_chunk(obs, texts, generator=torch.Generator(gen_device).manual_seed(3))
        assert torch.equal(out, ref)
    noise = torch.randn(4, 16, 4, 8, 8, device="cuda")
    p.cuda_graph = "off"
    ref_noise = p.predict_action_chunk(obs, texts, generator=torch.Generator(gen_device).manual_seed(4), noise=noise)
    p.cuda_graph = "chunk"
    out = p.predict_action_chunk(obs, texts, generator=torch.Generator(gen_device).manual_seed(4), noise=noise)
    assert torch.equal(out, ref_noise) and not torch.allclose(out, ref)


def test_chunk_graph_with_robot_state_and_mixed_camera_inputs(tiny_robot_policy):
    p = _on_cuda(tiny_robot_policy)
    g = torch.Generator().manual_seed(0)
    obs = {"rgb_obs": {"a": (torch.rand(2, 3, 48, 48, generator=g) * 2 - 1),
                       "b": torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=g).numpy(),
                       "c": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1},
           "state_obs": torch.randn(2, 6, generator=g)}
    texts = ["wave", "grasp the cup"]
    ref = p.predict_action_chunk(obs, texts, generator=torch.Generator("cuda").manual_seed(1))
    p.cuda_graph = "chunk"
    out = p.predict_action_chunk(obs, texts, generator=torch.Generator("cuda").manual_seed(1))
    assert out.shape == (2, 4, 5) and torch.equal(out, ref)
    obs["state_obs"] = obs["state_obs"] + 1
    p.cuda_graph = "off"
    ref2 = p.predict_action_chunk(obs, texts, generator=torch.Generator("cuda").manual_seed(1))
    p.cuda_graph = "chunk"
    p.predict_action_chunk(obs, texts, generator=torch.Generator("cuda").manual_seed(1))
    assert torch.equal(p.predict_action_chunk(obs, texts, generator=torch.Generator("cuda").manual_seed(1)), ref2)
    assert not torch.allclose(ref2, ref)


def test_sampler_graph_equals_eager(gpu_policy):
    p, obs = gpu_policy, calvin_obs()
    p.cuda_graph = "off"
    e1, e2 = _two_calls(p, 0, obs, TEXT)
    p.cuda_graph = "sampler"
    p.predict_action_chunk(obs, TEXT)
    g1, g2 = _two_calls(p, 0, obs, TEXT)
    assert torch.equal(g1, e1) and torch.equal(g2, e2)


def test_compiled_video_passes_in_the_chunk_graph_are_close_to_eager(tiny_policy):
    p = _on_cuda(tiny_policy)
    obs, noise = calvin_obs(), torch.randn(2, 16, 4, 8, 8, device="cuda")

    def chunk():
        return p.predict_action_chunk(obs, TEXT, generator=torch.Generator("cuda").manual_seed(0), noise=noise)

    ref = chunk()
    p.compile_video_model("default")
    compiled = chunk()
    torch.testing.assert_close(compiled, ref, rtol=1e-2, atol=1e-2)  # close, not necessarily bit-identical
    p.cuda_graph = "chunk"
    for _ in range(2):
        assert torch.equal(chunk(), compiled)  # the graph replays the compiled kernels exactly
