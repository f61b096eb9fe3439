"""CALVIN long-horizon metrics (calvin_agent.evaluation.utils.count_success and evaluate_policy.print_and_save).

* avg_seq_len = mean of the per-sequence results (0..5); it equals the sum of the five chain success rates.
* chain_sr[i] = fraction of sequences with result >= i, i = 1..5 (the "1/5 ... 5/5" numbers).
* task_info[task] = {"success", "total"}: every successful subtask counts once as success and attempt, the subtask
  that ended a sequence counts as an attempt without success, subtasks after it are not counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

SEQ_LEN = 5


def count_success(results: Sequence[int], seq_len: int = SEQ_LEN) -> list[float]:
    """[fraction of results >= i for i = 1..seq_len]; zeros for an empty list."""
    n = len(results)
    if n == 0:
        return [0.0] * seq_len
    count = Counter(results)
    return [sum(count[j] for j in range(i, seq_len + 1)) / n for i in range(1, seq_len + 1)]


def task_success_counts(results: Iterable[int], sequences: Iterable[Sequence[str]]) -> dict[str, dict[str, int]]:
    """{task: {"success": n, "total": n}} in the original's key order (first-seen successes, then failures)."""
    cnt_success: Counter[str] = Counter()
    cnt_fail: Counter[str] = Counter()
    for result, seq in zip(results, sequences):
        for task in seq[:result]:
            cnt_success[task] += 1
        if result < len(seq):
            cnt_fail[seq[result]] += 1
    total = cnt_success + cnt_fail
    return {task: {"success": cnt_success[task], "total": total[task]} for task in total}


def compute_metrics(results: Sequence[int], sequences: Sequence[Sequence[str]]) -> dict[str, Any]:
    """{"avg_seq_len", "chain_sr" {1..5}, "task_info"} as in the official results.json (chain_sr keys are ints;
    json turns them into "1".."5")."""
    if len(results) != len(sequences):
        raise ValueError(f"{len(results)} results for {len(sequences)} sequences")
    bad = [r for r in results if not 0 <= int(r) <= SEQ_LEN]
    if bad:
        raise ValueError(f"results must be in 0..{SEQ_LEN}, got {bad[:5]}")
    avg = float(sum(int(r) for r in results) / len(results)) if results else 0.0
    chain = {i + 1: sr for i, sr in enumerate(count_success([int(r) for r in results]))}
    return {"avg_seq_len": avg, "chain_sr": chain, "task_info": task_success_counts(results, sequences)}


def metrics_from_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over per-sequence records ({"index", "tasks", "result", ...}), taken in index order so the numbers
    (and the task_info key order) do not depend on completion order, sharding or resumption."""
    recs = sorted(records, key=lambda r: int(r["index"]))
    return compute_metrics([int(r["result"]) for r in recs], [list(r["tasks"]) for r in recs])


def progress_description(results: Sequence[int]) -> str:
    """The official tqdm description: '1/5 : x% | 2/5 : y% | ... |'."""
    return " ".join(f"{i + 1}/5 : {v * 100:.1f}% |" for i, v in enumerate(count_success(results))) + "|"


def format_metrics(metrics: dict[str, Any], title: str | None = None) -> str:
    """The official printout: average length, chain SRs, per-task SR lines."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"Average successful sequence length: {metrics['avg_seq_len']}")
    lines.append("Success rates for i instructions in a row:")
    for i, sr in metrics["chain_sr"].items():
        lines.append(f"{i}: {sr * 100:.1f}%")
    for task, c in metrics["task_info"].items():
        sr = c["success"] / c["total"] * 100 if c["total"] else 0.0
        lines.append(f"{task}: {c['success']} / {c['total']} |  SR: {sr:.1f}%")
    return "\n".join(lines)


def print_metrics(metrics: dict[str, Any], title: str | None = None) -> None:
    print(format_metrics(metrics, title))
