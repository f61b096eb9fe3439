"""vpp_core.side_stream on the CPU (the CUDA behaviour: tests/stage1/test_text_side_stream_gpu.py)."""

import torch

from vpp_core.side_stream import SideStream


def test_cpu_side_stream_runs_the_function_as_it_is():
    side = SideStream("cpu")
    assert side.stream is None
    x = torch.arange(4.0)
    assert side.run(lambda: x) is x


def test_side_stream_passes_tuples_through_and_deep_copies_to_a_fresh_one():
    import copy

    side = SideStream("cpu")
    a, b = torch.zeros(2), torch.ones(3)
    assert side.run(lambda: (a, b)) == (a, b)
    twin = copy.deepcopy(side)
    assert twin is not side and twin.device == side.device and twin.stream is None
