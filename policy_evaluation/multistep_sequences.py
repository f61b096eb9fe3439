"""CALVIN long-horizon evaluation sequences (port of calvin_agent.evaluation.multistep_sequences).

The official generator (calvin_reference.md §4) is reproduced exactly:

1. Initial symbolic states: product of the `possible_conditions` values (insertion order), filtered by
   "1 or 2 blocks on the table, at most one block per slider half" -> 192 states for CALVIN.
2. `np.array_split(range(num_sequences), num_states)` gives the number of sequences per state.
3. For state i: `np.random.seed(i)`, then draw 5 distinct task names with
   `np.random.choice(list(tasks), 5, replace=False)` until the draw is symbolically feasible (at every step exactly
   one condition->effect rule of the task applies) and the 5 tasks come from 5 distinct categories.
4. Pair each state with its sequences (state repeated) and shuffle the whole list with numpy seed 0.

Speed: the official code draws ~7.1M candidates for the 1000 sequences (~150 s on 2 cores for a literal port).
Here the draws of a state are generated in vectorised batches (`_permutation_prefixes`, bit-identical to
`RandomState.choice(n, 5, replace=False)`) and feasibility uses memoised symbolic transitions.

Nothing here touches numpy's global RNG: `RandomState(seed)` produces the same stream as `np.random.seed(seed)`
followed by the module-level functions, so the result is identical to the original while staying side-effect free.

The task table is data (`TaskTable`), so a different task subset (e.g. the built-in simulator's) can generate
sequences with the same rules via `generate_sequences(num_sequences, table)`.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

SEQ_LEN = 5

State = dict[str, Any]
Rule = dict[str, dict[str, Any]]  # {"condition": {...}, "effect": {...}}


def _accept_all(values: Sequence[Any]) -> bool:
    return True


def _calvin_state_filter(values: Sequence[Any]) -> bool:
    """Official filter: 1 or 2 blocks on the table and at most one block in each slider half."""
    return values.count("table") in (1, 2) and values.count("slider_right") < 2 and values.count("slider_left") < 2


@dataclass(frozen=True)
class TaskTable:
    """Symbolic task definitions used to generate feasible multi-step sequences.

    tasks: ordered mapping task name -> list of {"condition": {var: value | [values]}, "effect": {var: value}} rules.
        The insertion order matters: `np.random.choice` draws indices into `list(tasks)`.
    categories: task name -> category id; the 5 tasks of a sequence must have distinct categories.
    possible_conditions: ordered mapping state variable -> candidate values (product gives initial states).
    state_filter: predicate on the tuple of values of one combination (same order as possible_conditions).
    """

    tasks: Mapping[str, list[Rule]]
    categories: Mapping[str, int]
    possible_conditions: Mapping[str, list[Any]]
    state_filter: Callable[[Sequence[Any]], bool] = field(default_factory=lambda: _accept_all)
    seq_len: int = SEQ_LEN

    def __post_init__(self) -> None:
        missing = [t for t in self.tasks if t not in self.categories]
        if missing:
            raise ValueError(f"tasks without a category: {missing}")
        if len(self.tasks) < self.seq_len:
            raise ValueError(f"need at least {self.seq_len} tasks, got {len(self.tasks)}")

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks.keys())

    def subset(self, names: Sequence[str]) -> TaskTable:
        """The same rules restricted to `names` (kept in this table's order)."""
        unknown = set(names) - set(self.tasks)
        if unknown:
            raise KeyError(f"unknown tasks: {sorted(unknown)}")
        keep = [t for t in self.tasks if t in set(names)]
        return TaskTable(
            tasks={t: self.tasks[t] for t in keep},
            categories={t: self.categories[t] for t in keep},
            possible_conditions=self.possible_conditions,
            state_filter=self.state_filter,
            seq_len=self.seq_len,
        )


# --------------------------------------------------------------------------------------------------------------------
# The official CALVIN table (order and content as in calvin_agent/evaluation/multistep_sequences.py)
# --------------------------------------------------------------------------------------------------------------------

CALVIN_TASK_CATEGORIES: dict[str, int] = {
    "rotate_red_block_right": 1,
    "rotate_red_block_left": 1,
    "rotate_blue_block_right": 1,
    "rotate_blue_block_left": 1,
    "rotate_pink_block_right": 1,
    "rotate_pink_block_left": 1,
    "push_red_block_right": 1,
    "push_red_block_left": 1,
    "push_blue_block_right": 1,
    "push_blue_block_left": 1,
    "push_pink_block_right": 1,
    "push_pink_block_left": 1,
    "move_slider_left": 2,
    "move_slider_right": 2,
    "open_drawer": 3,
    "close_drawer": 3,
    "lift_red_block_table": 4,
    "lift_red_block_slider": 5,
    "lift_red_block_drawer": 6,
    "lift_blue_block_table": 4,
    "lift_blue_block_slider": 5,
    "lift_blue_block_drawer": 6,
    "lift_pink_block_table": 4,
    "lift_pink_block_slider": 5,
    "lift_pink_block_drawer": 6,
    "place_in_slider": 7,
    "place_in_drawer": 7,
    "turn_on_lightbulb": 8,
    "turn_off_lightbulb": 8,
    "turn_on_led": 8,
    "turn_off_led": 8,
    "push_into_drawer": 9,
    "stack_block": 10,
    "unstack_block": 11,
}

_BLOCKS = ("red", "blue", "pink")
_SLIDERS = ["slider_right", "slider_left"]


def _build_calvin_tasks() -> dict[str, list[Rule]]:
    t: dict[str, list[Rule]] = {}
    for c in _BLOCKS:
        for d in ("right", "left"):
            t[f"rotate_{c}_block_{d}"] = [
                {"condition": {f"{c}_block": "table", "grasped": 0}, "effect": {f"{c}_block": "table"}}
            ]
    for c in _BLOCKS:
        for d in ("right", "left"):
            t[f"push_{c}_block_{d}"] = [
                {"condition": {f"{c}_block": "table", "grasped": 0}, "effect": {f"{c}_block": "table"}}
            ]
    t["move_slider_left"] = [{"condition": {"slider": "right", "grasped": 0}, "effect": {"slider": "left"}}]
    t["move_slider_right"] = [{"condition": {"slider": "left", "grasped": 0}, "effect": {"slider": "right"}}]
    t["open_drawer"] = [{"condition": {"drawer": "closed", "grasped": 0}, "effect": {"drawer": "open"}}]
    t["close_drawer"] = [{"condition": {"drawer": "open", "grasped": 0}, "effect": {"drawer": "closed"}}]
    for c in _BLOCKS:
        b = f"{c}_block"
        t[f"lift_{c}_block_table"] = [{"condition": {b: "table", "grasped": 0}, "effect": {b: "grasped", "grasped": 1}}]
        t[f"lift_{c}_block_slider"] = [
            {"condition": {b: "slider_left", "slider": "right", "grasped": 0}, "effect": {b: "grasped", "grasped": 1}},
            {"condition": {b: "slider_right", "slider": "left", "grasped": 0}, "effect": {b: "grasped", "grasped": 1}},
        ]
        t[f"lift_{c}_block_drawer"] = [
            {"condition": {b: "drawer", "drawer": "open", "grasped": 0}, "effect": {b: "grasped", "grasped": 1}}
        ]
    place_slider: list[Rule] = []
    place_drawer: list[Rule] = []
    for c in _BLOCKS:
        b = f"{c}_block"
        # NB: as in the original table, placing with the door on the right puts the block in "slider_right" (and
        # lifting from "slider_right" needs the door on the left). Verified against all 7.1M draws behind the
        # official 1000 sequences; do not "fix".
        for door in ("right", "left"):
            place_slider.append(
                {"condition": {b: "grasped", "slider": door}, "effect": {b: f"slider_{door}", "grasped": 0}}
            )
        place_drawer.append({"condition": {b: "grasped", "drawer": "open"}, "effect": {b: "drawer", "grasped": 0}})
    t["place_in_slider"] = place_slider
    t["place_in_drawer"] = place_drawer
    stack: list[Rule] = []
    unstack: list[Rule] = []
    for top in _BLOCKS:
        for bottom in _BLOCKS:
            if top == bottom:
                continue
            # only top/bottom are constrained: with two blocks on the table two rules match and the draw is rejected
            stack.append(
                {
                    "condition": {f"{top}_block": "grasped", f"{bottom}_block": "table"},
                    "effect": {f"{top}_block": "stacked_top", f"{bottom}_block": "stacked_bottom", "grasped": 0},
                }
            )
            unstack.append(
                {
                    "condition": {f"{top}_block": "stacked_top", f"{bottom}_block": "stacked_bottom", "grasped": 0},
                    "effect": {f"{top}_block": "table", f"{bottom}_block": "table"},
                }
            )
    t["stack_block"] = stack
    t["unstack_block"] = unstack
    t["turn_on_lightbulb"] = [{"condition": {"lightbulb": 0, "grasped": 0}, "effect": {"lightbulb": 1}}]
    t["turn_off_lightbulb"] = [{"condition": {"lightbulb": 1, "grasped": 0}, "effect": {"lightbulb": 0}}]
    t["turn_on_led"] = [{"condition": {"led": 0, "grasped": 0}, "effect": {"led": 1}}]
    t["turn_off_led"] = [{"condition": {"led": 1, "grasped": 0}, "effect": {"led": 0}}]
    push_into: list[Rule] = []
    for c in _BLOCKS:
        others = [o for o in _BLOCKS if o != c]
        cond: dict[str, Any] = {f"{c}_block": "table"}
        for o in others:
            cond[f"{o}_block"] = list(_SLIDERS)
        cond.update({"drawer": "open", "grasped": 0})
        push_into.append({"condition": cond, "effect": {f"{c}_block": "drawer", "grasped": 0}})
    t["push_into_drawer"] = push_into
    return t


CALVIN_POSSIBLE_CONDITIONS: dict[str, list[Any]] = {
    "led": [0, 1],
    "lightbulb": [0, 1],
    "slider": ["right", "left"],
    "drawer": ["closed", "open"],
    "red_block": ["table", "slider_right", "slider_left"],
    "blue_block": ["table", "slider_right", "slider_left"],
    "pink_block": ["table", "slider_right", "slider_left"],
    "grasped": [0],
}

CALVIN_TASK_TABLE = TaskTable(
    tasks=_build_calvin_tasks(),
    categories=CALVIN_TASK_CATEGORIES,
    possible_conditions=CALVIN_POSSIBLE_CONDITIONS,
    state_filter=_calvin_state_filter,
)


# --------------------------------------------------------------------------------------------------------------------
# Symbolic feasibility
# --------------------------------------------------------------------------------------------------------------------


def check_condition(state: Mapping[str, Any], condition: Mapping[str, Any]) -> bool:
    for k, v in condition.items():
        if isinstance(v, (str, int)):
            if not state[k] == v:
                return False
        elif isinstance(v, list):
            if state[k] not in v:
                return False
        else:
            raise TypeError(f"unsupported condition value {v!r} for {k}")
    return True


def update_state(state: Mapping[str, Any], effect: Mapping[str, Any]) -> State:
    next_state = dict(state)
    next_state.update(effect)
    return next_state


def valid_task(curr_state: Mapping[str, Any], rules: Sequence[Rule]) -> list[State]:
    """All successor states: one per rule whose condition holds."""
    return [update_state(curr_state, r["effect"]) for r in rules if check_condition(curr_state, r["condition"])]


def check_sequence(state: Mapping[str, Any], seq: Sequence[str], table: TaskTable = CALVIN_TASK_TABLE) -> bool:
    """Feasible iff exactly one rule applies at every step, and all categories are distinct."""
    for task_name in seq:
        states = valid_task(state, table.tasks[task_name])
        if len(states) != 1:
            return False
        state = states[0]
    categories = [table.categories[name] for name in seq]
    return len(categories) == len(set(categories))


def get_initial_states(table: TaskTable = CALVIN_TASK_TABLE) -> list[State]:
    keys = list(table.possible_conditions.keys())
    combos = filter(table.state_filter, itertools.product(*table.possible_conditions.values()))
    return [dict(zip(keys, vals)) for vals in combos]


def get_sequences_for_state_reference(
    state: Mapping[str, Any], num_sequences: int, seed: int, table: TaskTable = CALVIN_TASK_TABLE
) -> list[tuple[str, ...]]:
    """Literal port of the original `get_sequences_for_state2` (slow: ~50 us per draw). Kept as the reference that
    the fast sampler is tested against."""
    rng = np.random.RandomState(seed)
    names = np.array(table.task_names)
    results: list[tuple[str, ...]] = []
    while len(results) < num_sequences:
        seq = tuple(rng.choice(names, size=table.seq_len, replace=False).tolist())
        if check_sequence(state, seq, table):
            results.append(seq)
    return results


def _permutation_prefixes(rng: np.random.RandomState, n: int, k: int, count: int) -> np.ndarray:
    """`count` consecutive results of `rng.choice(n, k, replace=False)` (== `rng.permutation(n)[:k]`), batched.

    The legacy `RandomState.shuffle` of a length-n array calls `random_interval(i)` for i = n-1 .. 1 (masked
    rejection sampling on 32-bit outputs) and swaps a[i] <-> a[j]. `RandomState.randint(0, i + 1)` with an array
    of upper bounds and a 32-bit dtype uses the very same masked rejection sampling on the same stream, so the j's of
    `count` shuffles come from one vectorised call. The first k entries of each permutation are then found by tracing
    positions 0..k-1 back through the transpositions (a_final[p] = p mapped through the swaps in reverse order).
    Equality with the slow path is covered by the tests.
    """
    highs = np.tile(np.arange(n, 1, -1, dtype=np.int32), count)  # exclusive bounds i + 1 for i = n-1 .. 1
    js = rng.randint(0, highs, dtype=np.int32).reshape(count, n - 1)
    dt = np.int8 if n < 127 else np.int32
    jt = np.ascontiguousarray(js.T.astype(dt))  # (n-1, count): row s holds the j of swap s (i = n-1-s)
    q = np.repeat(np.arange(k, dtype=dt)[:, None], count, axis=1)  # (k, count) traced positions
    hit_i = np.empty(q.shape, dtype=bool)
    hit_j = np.empty(q.shape, dtype=bool)
    for s in range(n - 2, -1, -1):  # undo the last swap first
        i = dt(n - 1 - s)
        j = np.broadcast_to(jt[s], q.shape)
        np.equal(q, i, out=hit_i)
        np.equal(q, j, out=hit_j)
        np.copyto(q, i, where=hit_j)
        np.copyto(q, j, where=hit_i)
    return q.T.astype(np.int64)


class _CompiledTable:
    """Memoised symbolic transitions over states encoded as tuples (fast feasibility checks)."""

    def __init__(self, table: TaskTable):
        self.table = table
        self.keys = list(table.possible_conditions.keys())
        self.names = table.task_names
        self.cats = np.array([table.categories[t] for t in self.names])
        self._memo: dict[tuple[tuple[Any, ...], int], tuple[Any, ...] | None] = {}

    def encode(self, state: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(state[k] for k in self.keys)

    def step(self, st: tuple[Any, ...], task: int) -> tuple[Any, ...] | None:
        key = (st, task)
        try:
            return self._memo[key]
        except KeyError:
            pass
        nxt = valid_task(dict(zip(self.keys, st)), self.table.tasks[self.names[task]])
        res = self.encode(nxt[0]) if len(nxt) == 1 else None
        self._memo[key] = res
        return res

    def feasible(self, st: tuple[Any, ...], seq: Sequence[int]) -> bool:
        for t in seq:
            st = self.step(st, t)  # type: ignore[assignment]
            if st is None:
                return False
        return True


def get_sequences_for_state(
    state: Mapping[str, Any], num_sequences: int, seed: int, table: TaskTable = CALVIN_TASK_TABLE,
    max_draws: int = 50_000_000,
) -> list[tuple[str, ...]]:
    """Rejection-sample `num_sequences` feasible sequences for one initial state.

    Identical output to the original `get_sequences_for_state2` (np.random.seed(seed), then
    `np.random.choice(list(tasks), 5, replace=False)` until feasible; duplicates allowed), but draws are generated in
    vectorised batches. Draws past the last accepted one are never looked at, so over-drawing is harmless (the RNG
    is local to this state).
    """
    if num_sequences <= 0:
        return []
    comp = _CompiledTable(table)
    n, k = len(comp.names), table.seq_len
    rng = np.random.RandomState(seed)
    st0 = comp.encode(state)
    results: list[tuple[str, ...]] = []
    batch, drawn = 4096, 0
    while True:
        pref = _permutation_prefixes(rng, n, k, batch)
        drawn += batch
        c = np.sort(comp.cats[pref], axis=1)
        distinct = np.all(c[:, 1:] != c[:, :-1], axis=1)
        for row in np.flatnonzero(distinct):
            seq = pref[row].tolist()
            if comp.feasible(st0, seq):
                results.append(tuple(comp.names[t] for t in seq))
                if len(results) == num_sequences:
                    return results
        if drawn >= max_draws:
            raise RuntimeError(f"only {len(results)} feasible sequences for state {dict(state)} after {drawn} draws")
        # size the next batch from the acceptance rate seen so far (over-drawing only wastes time)
        if results:
            expected = (num_sequences - len(results)) * drawn / len(results)
            batch = int(min(max(1.3 * expected + 1024, 1024), 262144))
        else:
            batch = min(batch * 2, 262144)


def _worker(args: tuple[State, int, int, TaskTable]) -> list[tuple[str, ...]]:
    state, n, seed, table = args
    return get_sequences_for_state(state, n, seed, table)


def _pool_context() -> Any:
    """fork (like the original's Pool) when available and no other Python thread runs; else no pool. fork needs no
    `if __name__ == "__main__"` guard in the caller's script, and the workers only run numpy + plain Python."""
    import threading

    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return None
    return multiprocessing.get_context("fork")


def _can_pickle(table: TaskTable) -> bool:
    import pickle

    try:
        pickle.dumps(table)
        return True
    except Exception:
        return False


def generate_sequences(
    num_sequences: int = 1000, table: TaskTable = CALVIN_TASK_TABLE, num_workers: int | None = None
) -> list[tuple[State, tuple[str, ...]]]:
    """Official algorithm for any count and any task table.

    Returns a list of (initial_condition dict, tuple of `seq_len` task names). The result does not depend on
    `num_workers` (each state has its own seed; the final shuffle runs in this process). `num_workers=None` uses a
    fork pool over min(cpu_count, 8) processes for >= 32 states when fork is available and no other Python thread
    runs, otherwise runs in this process (~20-40 s for the official 1000 on 2 cores).
    """
    initial_states = get_initial_states(table)
    if not initial_states:
        raise ValueError("the task table yields no initial state")
    counts = [len(a) for a in np.array_split(range(num_sequences), len(initial_states))]
    jobs = [(s, n, i, table) for i, (s, n) in enumerate(zip(initial_states, counts)) if n > 0]
    if num_workers is None:
        # a pool only pays off when there is real work (~37k draws per state for CALVIN)
        num_workers = min(os.cpu_count() or 1, 8) if len(jobs) >= 32 else 1
    ctx = _pool_context()
    if num_workers > 1 and len(jobs) > 1 and ctx is not None and _can_pickle(table):
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=ctx) as pool:
            per_state = list(pool.map(_worker, jobs, chunksize=max(1, len(jobs) // (4 * num_workers))))
    else:
        per_state = [_worker(j) for j in jobs]
    results: list[tuple[State, tuple[str, ...]]] = []
    for (state, n, _, _), seqs in zip(jobs, per_state):
        assert len(seqs) == n
        for seq in seqs:
            results.append((dict(state), seq))
    # np.random.shuffle of a python list under temp_seed(0) == RandomState(0).shuffle
    np.random.RandomState(0).shuffle(results)
    return results


@lru_cache(maxsize=8)
def _cached_calvin_sequences(num_sequences: int) -> tuple[tuple[tuple[tuple[str, Any], ...], tuple[str, ...]], ...]:
    seqs = generate_sequences(num_sequences, CALVIN_TASK_TABLE)
    return tuple((tuple(s.items()), t) for s, t in seqs)


def get_sequences(num_sequences: int = 1000) -> list[tuple[State, tuple[str, ...]]]:
    """The official CALVIN evaluation sequences: list of (initial_condition, 5 task names).

    Cached per process; each call returns fresh dicts so callers may mutate them."""
    return [(dict(s), t) for s, t in _cached_calvin_sequences(int(num_sequences))]
