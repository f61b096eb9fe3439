import time

from vpp_core.input_wait import InputWaitMeter


def slow_items(n: int, delay_s: float):
    for i in range(n):
        time.sleep(delay_s)
        yield i


def test_meter_counts_time_blocked_in_next_only():
    meter = InputWaitMeter(slow_items(3, 0.05))
    seen = []
    for item in meter:
        time.sleep(0.1)  # work in the loop body is not waiting for input
        seen.append(item)
    assert seen == [0, 1, 2]
    waited = meter.take()
    assert 0.14 <= waited < 0.3
    assert meter.take() == 0.0


def test_meter_restarts_on_each_iteration():
    meter = InputWaitMeter([1, 2])
    assert list(meter) == [1, 2]
    assert list(meter) == [1, 2]
