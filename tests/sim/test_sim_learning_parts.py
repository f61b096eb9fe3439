"""benchmarks/sim_learning.py splits results into parts small enough to transfer and joins them back byte for byte."""

import numpy as np

from benchmarks import sim_learning


def test_parts_round_trip(tmp_path, monkeypatch):
    src = tmp_path / "policy"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {"model.safetensors": rng.bytes(70_000), "config.yaml": b"a: 1\n", "sub/log.txt": rng.bytes(5_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    monkeypatch.setattr(sim_learning, "PART_BYTES", 16_384)
    parts = sim_learning.export_parts(src, tmp_path / "export", "policy")
    assert len(parts) >= 5 and all((tmp_path / "export" / p).stat().st_size <= 16_384 for p in parts)
    assert not (tmp_path / "export" / "policy.tar").exists()
    out = sim_learning.join_parts(tmp_path / "export", "policy", tmp_path / "back")
    assert out == tmp_path / "back" / "policy"
    for name, data in files.items():
        assert (out / name).read_bytes() == data
