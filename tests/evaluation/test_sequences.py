"""The CALVIN sequence generator: golden 1000, the batched sampler vs the literal port, invariants for any count."""

from collections import Counter

import numpy as np
import pytest

from policy_evaluation import multistep_sequences as ms


def _golden_per_state(golden):
    """Undo the final seed-0 shuffle: per initial state, its sequences in draw order."""
    n = len(golden)
    perm = list(range(n))
    np.random.RandomState(0).shuffle(perm)  # the same swaps as shuffling the (state, seq) list
    unshuffled = [None] * n
    for pos, k in enumerate(perm):
        unshuffled[k] = golden[pos]
    states = ms.get_initial_states()
    counts = [len(a) for a in np.array_split(range(n), len(states))]
    out, k = {}, 0
    for i, (state, c) in enumerate(zip(states, counts)):
        out[i] = []
        for _ in range(c):
            assert unshuffled[k]["initial_condition"] == state
            out[i].append(tuple(unshuffled[k]["sequence"]))
            k += 1
    return states, out


def test_initial_states():
    states = ms.get_initial_states()
    assert len(states) == 192
    assert len({tuple(s.items()) for s in states}) == 192
    for s in states:
        blocks = [s["red_block"], s["blue_block"], s["pink_block"]]
        assert blocks.count("table") in (1, 2)
        assert blocks.count("slider_left") <= 1 and blocks.count("slider_right") <= 1
        assert s["grasped"] == 0
    assert list(states[0]) == ["led", "lightbulb", "slider", "drawer", "red_block", "blue_block", "pink_block",
                               "grasped"]


def test_task_table_order_and_categories():
    names = ms.CALVIN_TASK_TABLE.task_names
    assert len(names) == 34 and names[0] == "rotate_red_block_right" and names[-1] == "push_into_drawer"
    assert set(ms.CALVIN_TASK_CATEGORIES) == set(names)
    assert sorted(set(ms.CALVIN_TASK_CATEGORIES.values())) == list(range(1, 12))


def test_batched_draws_equal_random_choice():
    for seed in (0, 5, 191):
        a, b = np.random.RandomState(seed), np.random.RandomState(seed)
        fast = np.concatenate([ms._permutation_prefixes(a, 34, 5, 300) for _ in range(3)])
        slow = np.array([b.choice(34, 5, replace=False) for _ in range(900)])
        np.testing.assert_array_equal(fast, slow)
    # other population sizes (a task subset)
    a, b = np.random.RandomState(3), np.random.RandomState(3)
    np.testing.assert_array_equal(ms._permutation_prefixes(a, 23, 5, 200),
                                  [b.choice(23, 5, replace=False) for _ in range(200)])


def test_fast_sampler_equals_literal_port():
    states = ms.get_initial_states()
    for i in (0, 100):
        assert ms.get_sequences_for_state(states[i], 2, i) == ms.get_sequences_for_state_reference(states[i], 2, i)


def test_per_state_sequences_match_golden(golden_sequences):
    """The states whose draws hit the subtle rules (place_in_slider side, stack conditions) plus a few others."""
    states, per_state = _golden_per_state(golden_sequences)
    for i in (0, 6, 14, 21, 25, 39, 40, 191):
        assert ms.get_sequences_for_state(states[i], len(per_state[i]), i) == per_state[i], f"state {i}"


@pytest.mark.slow
def test_get_sequences_1000_equals_golden(golden_sequences):
    seqs = ms.get_sequences(1000)
    assert len(seqs) == 1000
    for k, ((cond, tasks), g) in enumerate(zip(seqs, golden_sequences)):
        assert cond == g["initial_condition"], k
        assert list(tasks) == g["sequence"], k


def test_golden_statistics(golden_sequences):
    counts = Counter(t for g in golden_sequences for t in g["sequence"])
    assert len(counts) == 34
    assert counts["place_in_slider"] == 398 and counts["open_drawer"] == 379 and counts["lift_pink_block_drawer"] == 17
    assert len({tuple(g["initial_condition"].items()) for g in golden_sequences}) == 192


def _check_invariants(seqs, table):
    names = set(table.task_names)
    for cond, tasks in seqs:
        assert len(tasks) == 5 and len(set(tasks)) == 5
        assert set(tasks) <= names
        assert len({table.categories[t] for t in tasks}) == 5
        assert ms.check_sequence(cond, tasks, table)
        assert table.state_filter(tuple(cond.values()))


def test_other_counts_deterministic_feasible_and_nested():
    s10 = ms.generate_sequences(10, num_workers=1)
    s34 = ms.generate_sequences(34, num_workers=1)
    assert len(s10) == 10 and len(s34) == 34
    assert s10 == ms.generate_sequences(10, num_workers=1)
    _check_invariants(s34, ms.CALVIN_TASK_TABLE)
    # with fewer sequences than states, state i gets its first draw: the 10 are among the 34 (order differs)
    as_keys = lambda seqs: Counter((tuple(c.items()), t) for c, t in seqs)  # noqa: E731
    assert not as_keys(s10) - as_keys(s34)
    # the first 10 states each appear once
    states = ms.get_initial_states()
    assert sorted(tuple(c.items()) for c, _ in s10) == sorted(tuple(s.items()) for s in states[:10])


def test_worker_count_does_not_change_the_result():
    assert ms.generate_sequences(24, num_workers=2) == ms.generate_sequences(24, num_workers=1)


def test_get_sequences_returns_fresh_copies():
    a = ms.get_sequences(3)
    a[0][0]["led"] = "mutated"
    assert ms.get_sequences(3)[0][0]["led"] in (0, 1)


def test_check_sequence_rules():
    state = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed", "red_block": "table",
             "blue_block": "table", "pink_block": "slider_left", "grasped": 0}
    t = ms.CALVIN_TASK_TABLE
    assert ms.check_sequence(state, ["turn_on_led", "open_drawer", "move_slider_left", "rotate_red_block_left",
                                     "lift_blue_block_table"], t)
    # two categories 8 -> rejected
    assert not ms.check_sequence(state, ["turn_on_led", "turn_on_lightbulb", "open_drawer", "move_slider_left",
                                         "lift_red_block_table"], t)
    # condition fails: led already on after turn_on_led
    assert not ms.check_sequence(state, ["turn_on_led", "turn_on_led"], t)
    # stack with two blocks left on the table: two rules apply -> infeasible; with one: feasible
    grasp_pink = dict(state, pink_block="grasped", grasped=1)
    assert not ms.check_sequence(grasp_pink, ["stack_block"], t)
    assert ms.check_sequence(dict(grasp_pink, blue_block="slider_right"), ["stack_block"], t)
    # placing with the door on the right fills slider_right, which is then not liftable with the door still right
    assert ms.valid_task(grasp_pink, t.tasks["place_in_slider"])[0]["pink_block"] == "slider_right"


def test_subset_table_and_sim_table():
    sub = ms.CALVIN_TASK_TABLE.subset(["open_drawer", "close_drawer", "turn_on_led", "turn_off_led",
                                       "move_slider_left", "move_slider_right", "lift_red_block_table",
                                       "rotate_red_block_left"])
    assert sub.task_names[0] == "rotate_red_block_left"  # keeps the original order
    with pytest.raises(KeyError):
        ms.CALVIN_TASK_TABLE.subset(["no_such_task"])
    with pytest.raises(ValueError, match="category"):
        ms.TaskTable(tasks={"a": []}, categories={}, possible_conditions={})

    sim = pytest.importorskip("vpp_sim.tasks")
    table = sim.sim_task_table()
    seqs = ms.generate_sequences(12, table, num_workers=1)
    assert len(seqs) == 12
    _check_invariants(seqs, table)
    assert {t for _, ts in seqs for t in ts} <= set(sim.SIM_TASKS)
