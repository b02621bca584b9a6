"""Console tables: metrics down, agents across, within 100 columns."""

from __future__ import annotations

from marl_jax.run.report import REPORT_METRICS, format_report, metrics_table
from marl_jax.walkforward.pooled import format_table

NAMES = ("buy_and_hold", "flat", "random", "momentum", "linear", "oracle")


def _scores(seed: float) -> dict[str, float]:
    return {k: seed * 100 + i - 123.4567 for i, k in enumerate(REPORT_METRICS)}


def test_a_block_reads_metric_by_agent_within_100_columns():
    by_name = {"policy (greedy)": _scores(1), **{n: _scores(i + 2) for i, n in enumerate(NAMES)}}
    lines = metrics_table(by_name, "test split")
    assert max(map(len, lines)) <= 100
    assert lines[0] == "test split: " + ", ".join(by_name)  # the full names, in column order
    assert lines[1].split() == ["policy", "buy&hold", "flat", "random", "momentum", "linear",
                                "oracle"]  # fmt: skip
    for k, line in zip(REPORT_METRICS, lines[2:], strict=True):
        label, *cells = line.split()
        assert label == k
        assert [float(c) for c in cells] == [round(s[k], 4) for s in by_name.values()]


def test_train_and_walk_forward_tables_fit_100_columns():
    by_name = {"policy": _scores(1), **{n: _scores(2) for n in NAMES}}
    checks = {"folds": 1, "one_sign_folds": 0, "capture": 0.5}
    table = format_report({"metrics": by_name, "checks": checks})
    assert max(map(len, table.splitlines())) <= 100 and "policy (greedy)" in table
    assert "capture (policy active IR / oracle active IR)" in table
    folds = [{"fold": k, "metrics": by_name} for k in range(5)]
    checks = {"folds": 5, "one_sign_folds": 1, "capture": 0.5}
    wf = {"folds": folds, "metrics": by_name, "checks": checks}
    text = format_table(wf)
    assert max(map(len, text.splitlines())) <= 100
    assert [line.split(":")[0] for line in text.splitlines() if ": policy, " in line] == [
        *(f"fold {k}" for k in range(5)),
        "pooled",
    ]
    assert "one-sign test folds: 1 of 5" in text
