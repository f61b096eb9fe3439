import json

import numpy as np
import pytest
import torch

from policy_models.normalization import (
    Stats,
    absolute_actions,
    axis_angle_quat_wxyz,
    compute_stats,
    denormalize_bound,
    normalize_bound,
    percentile_bounds,
    quat_multiply_wxyz,
    relative_actions,
)


def test_percentile_bounds_known_array():
    x = np.stack([np.arange(101.0), 2 * np.arange(101.0), np.full(101, 5.0)], axis=1)  # (101, 3)
    lo, hi = percentile_bounds(x)
    np.testing.assert_allclose(lo, [1.0, 2.0, 5.0])
    np.testing.assert_allclose(hi, [99.0, 198.0, 5.0])
    # leading axes are flattened: (N, L, D) gives the same as (N * L, D)
    lo3, hi3 = percentile_bounds(x.reshape(101, 1, 3))
    np.testing.assert_allclose(lo3, lo)
    np.testing.assert_allclose(hi3, hi)
    # linear interpolation as np.percentile: 0..9 -> p1 = 0.09, p99 = 8.91
    lo, hi = percentile_bounds(np.arange(10.0)[:, None])
    np.testing.assert_allclose([lo[0], hi[0]], [0.09, 8.91])


def test_normalize_formula_and_clip():
    lo, hi = np.array([0.0, -2.0]), np.array([10.0, 2.0])
    x = np.array([[0.0, 0.0], [10.0, 2.0], [5.0, -2.0], [20.0, -5.0]])
    y = normalize_bound(x, lo, hi)
    expected = np.clip(2 * (x - lo) / (hi - lo + 1e-8) - 1, -1, 1)
    np.testing.assert_allclose(y, expected)
    np.testing.assert_allclose(y[3], [1.0, -1.0])  # clipped
    unclipped = normalize_bound(x, lo, hi, clip=False)
    assert unclipped[3, 0] > 1.0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_normalize_denormalize_round_trip(backend):
    rng = np.random.default_rng(0)
    lo = rng.uniform(-3, 0, 38)
    hi = lo + rng.uniform(0.1, 4, 38)
    x = rng.uniform(lo, hi, (5, 8, 38))
    if backend == "torch":
        x = torch.from_numpy(x)
    y = normalize_bound(x, lo, hi)
    assert type(y) is type(x)
    back = denormalize_bound(y, lo, hi)
    back = back.numpy() if backend == "torch" else back
    x = x.numpy() if backend == "torch" else x
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-6)


def test_stats_save_load_and_original_format(tmp_path):
    rng = np.random.default_rng(1)
    st = compute_stats(rng.normal(size=(50, 38)), rng.normal(size=(50, 8, 38)), meta={"note": "x"})
    st.save(tmp_path / "stats.json")
    back = Stats.load(tmp_path / "stats.json")
    for k in ("state_01", "state_99", "action_01", "action_99"):
        np.testing.assert_array_equal(getattr(back, k), getattr(st, k))
    assert back.relative_mode == "componentwise" and back.meta == {"note": "x"}
    # the original file had only the four percentile keys
    (tmp_path / "orig.json").write_text(json.dumps({k: [0.0, 1.0] for k in ("state_01", "action_01")}
                                                   | {k: [1.0, 2.0] for k in ("state_99", "action_99")}))
    orig = Stats.load(tmp_path / "orig.json")
    assert orig.relative_mode == "componentwise" and orig.state_dim == 2
    state = np.array([0.5, 1.5])  # inside [0, 1] x [1, 2]: no clipping, so the state comes back
    np.testing.assert_allclose(orig.normalize_state(state), [0.0, 0.0], atol=1e-7)  # the formula's 1e-8 epsilon
    np.testing.assert_allclose(orig.denormalize_state(orig.normalize_state(state)), state, atol=1e-7)
    np.testing.assert_allclose(orig.denormalize_action(orig.normalize_action(state)), state, atol=1e-7)


def test_stats_errors_name_file_and_field(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"state_01": [0], "state_99": [1], "action_01": [0]}))
    with pytest.raises(ValueError, match=r"bad\.json.*action_99"):
        Stats.load(p)
    p.write_text(json.dumps({"state_01": [0], "state_99": [1], "action_01": [0], "action_99": [1], "mu": [0]}))
    with pytest.raises(ValueError, match=r"bad\.json.*unknown field.*mu"):
        Stats.load(p)
    p.write_text(json.dumps({"state_01": [2], "state_99": [1], "action_01": [0], "action_99": [1]}))
    with pytest.raises(ValueError, match=r"bad\.json.*state_99.*state_01"):
        Stats.load(p)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Stats.load(tmp_path / "nope.json")


def test_quaternion_product_by_hand():
    c = np.sqrt(0.5)
    qz = np.array([c, 0, 0, c])  # 90 deg about z (w, x, y, z)
    qx = np.array([c, c, 0, 0])  # 90 deg about x
    # by hand: w = c*c - 0 = 0.5 ; v = c*(0,0,c) + c*(c,0,0) + (c,0,0) x (0,0,c) = (0.5, -0.5, 0.5)
    np.testing.assert_allclose(quat_multiply_wxyz(qx, qz), [0.5, 0.5, -0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(axis_angle_quat_wxyz([0, 0, 1], np.pi / 2), qz, atol=1e-12)


@pytest.mark.parametrize("mode", ["componentwise", "compose"])
@pytest.mark.parametrize("order", ["xyzw", "wxyz"])
def test_relative_absolute_round_trip(mode, order):
    rng = np.random.default_rng(2)

    def pose_block(n):
        q = rng.normal(size=(n, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        return np.concatenate([rng.normal(size=(n, 3)), q], axis=1)

    def make(n):
        return np.concatenate([pose_block(n), rng.normal(size=(n, 12)), pose_block(n), rng.normal(size=(n, 12))], 1)

    state = make(1)[0]
    targets = make(8)
    rel = relative_actions(targets, state, mode, order)
    assert rel.shape == (8, 38)
    back = absolute_actions(rel, state, mode, order)
    if mode == "componentwise":
        np.testing.assert_allclose(rel, targets - state)
        np.testing.assert_allclose(back, targets, atol=1e-12)
    else:
        for a in (0, 19):  # same rotation, possibly opposite sign
            qa, qb = back[:, a + 3:a + 7], targets[:, a + 3:a + 7]
            np.testing.assert_allclose(np.abs(np.sum(qa * qb, axis=1)), 1.0, atol=1e-9)
            np.testing.assert_allclose(back[:, a:a + 3], targets[:, a:a + 3], atol=1e-12)
        mask = np.ones(38, bool)
        mask[[3, 4, 5, 6, 22, 23, 24, 25]] = False
        np.testing.assert_allclose(back[:, mask], targets[:, mask], atol=1e-12)
        w_idx = 3 + (3 if order == "xyzw" else 0)
        assert np.all(rel[:, w_idx] >= 0)  # canonical delta sign
