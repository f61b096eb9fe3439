"""Metrics on synthetic results (calvin_reference §4 "Metrics")."""

import json

import pytest

from policy_evaluation.metrics import (
    compute_metrics,
    count_success,
    format_metrics,
    metrics_from_records,
    progress_description,
)

SEQS = [
    ["a", "b", "c", "d", "e"],
    ["b", "a", "c", "d", "e"],
    ["c", "d", "e", "a", "b"],
    ["a", "c", "b", "e", "d"],
]


def test_chain_sr_and_avg_len():
    results = [0, 2, 5, 3]
    m = compute_metrics(results, SEQS)
    assert m["avg_seq_len"] == pytest.approx(2.5)
    assert m["chain_sr"] == {1: 0.75, 2: 0.75, 3: 0.5, 4: 0.25, 5: 0.25}
    assert sum(m["chain_sr"].values()) == pytest.approx(m["avg_seq_len"])
    assert count_success([]) == [0.0] * 5


def test_task_info_counts_attempts_until_first_failure():
    m = compute_metrics([0, 2, 5, 3], SEQS)
    ti = m["task_info"]
    # seq0 fails a; seq1 succeeds b, a then fails c; seq2 all five succeed; seq3 succeeds a, c, b then fails e
    assert ti["a"] == {"success": 3, "total": 4}
    assert ti["b"] == {"success": 3, "total": 3}
    assert ti["c"] == {"success": 2, "total": 3}
    assert ti["d"] == {"success": 1, "total": 1}
    assert ti["e"] == {"success": 1, "total": 2}
    # original key order: first-seen successes, then tasks that only failed
    assert list(ti)[:3] == ["b", "a", "c"]


def test_json_keys_and_validation():
    m = compute_metrics([1], [SEQS[0]])
    assert list(json.loads(json.dumps(m))["chain_sr"]) == ["1", "2", "3", "4", "5"]
    with pytest.raises(ValueError):
        compute_metrics([6], [SEQS[0]])
    with pytest.raises(ValueError):
        compute_metrics([1, 2], [SEQS[0]])


def test_records_are_taken_in_index_order():
    recs = [{"index": i, "result": r, "tasks": s} for i, (r, s) in enumerate(zip([0, 2, 5, 3], SEQS))]
    assert metrics_from_records(reversed(recs)) == compute_metrics([0, 2, 5, 3], SEQS)


def test_printout_like_the_official_script():
    text = format_metrics(compute_metrics([0, 2, 5, 3], SEQS), "Results for x:")
    lines = text.splitlines()
    assert lines[0] == "Results for x:"
    assert lines[1] == "Average successful sequence length: 2.5"
    assert lines[2] == "Success rates for i instructions in a row:"
    assert lines[3:8] == ["1: 75.0%", "2: 75.0%", "3: 50.0%", "4: 25.0%", "5: 25.0%"]
    assert "a: 3 / 4 |  SR: 75.0%" in lines
    assert progress_description([0, 5]) == "1/5 : 50.0% | 2/5 : 50.0% | 3/5 : 50.0% | 4/5 : 50.0% | 5/5 : 50.0% ||"
