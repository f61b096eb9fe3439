"""vpp_core.side_stream on the CPU (the CUDA behaviour: tests/stage1/test_text_side_stream_gpu.py)."""

import torch

from vpp_core.side_stream import SideStream


def test_cpu_side_stream_runs_the_function_as_it_is():
    side = SideStream("cpu")
    assert side.stream is None
    x = torch.arange(4.0)
    assert side.run(lambda: x) is x
