"""FrozenHeap: frozen once, after a full collection, and unfrozen when the training loop ends, even by an error."""

import gc
import weakref

import pytest

from vpp_core.gc_freeze import FrozenHeap


class _Node:
    pass


def test_freezes_once_after_collecting_and_unfreezes_on_exit(monkeypatch):
    freezes = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: (freezes.append(1), real_freeze())[-1])
    assert gc.get_freeze_count() == 0
    cycle = _Node()
    cycle.self = cycle
    dead = weakref.ref(cycle)
    del cycle
    alive = _Node()
    with FrozenHeap() as heap:
        assert gc.get_freeze_count() == 0  # nothing before the first step
        heap.freeze_once()
        frozen = gc.get_freeze_count()
        assert frozen > 0 and heap.frozen
        assert dead() is None  # the garbage cycle was collected, not frozen
        heap.freeze_once()
        _Node()
        assert len(freezes) == 1  # once only
        # nothing made since joins the frozen objects; some of them may be freed meanwhile (other threads' objects,
        # e.g. a progress bar's monitor thread left by an earlier test)
        assert gc.get_freeze_count() <= frozen
    assert gc.get_freeze_count() == 0 and not heap.frozen
    assert alive is not None


def test_unfreezes_when_the_loop_raises():
    with pytest.raises(RuntimeError), FrozenHeap() as heap:
        heap.freeze_once()
        raise RuntimeError("step failed")
    assert gc.get_freeze_count() == 0


def test_a_loop_that_never_stepped_leaves_the_collector_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
    with FrozenHeap():
        pass
    assert calls == []
