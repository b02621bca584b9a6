"""``marl-jax compare``: reports grouped by config, the mean ± std over seeds and folds."""

from __future__ import annotations

import json
import random
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from marl_jax import compare
from marl_jax.console import main as console_main

AGENTS = ("policy", "buy_and_hold", "flat", "linear")
KEYS = ("sharpe", "active_ir", "alpha_t", "total_log_return", "max_drawdown", "turnover")


def _metrics(rng: random.Random, oracle: bool = False) -> dict[str, dict[str, float]]:
    """Random metrics by agent (every summary key the table reads)."""
    agents = (*AGENTS, "oracle") if oracle else AGENTS
    return {a: {k: rng.uniform(-3, 3) for k in KEYS} for a in agents}


def _report(command: str, config: str, sha: str, folds: list[dict], one_sign: int) -> dict:
    """A report of the shared schema (version 1); ``metrics`` is the first fold's (a pooled
    value that the per-fold statistics must not use for a walk-forward)."""
    return {
        "schema_version": 1,
        "command": command,
        "provenance": {"config": config, "config_sha256": sha, "cost_bps": 1.0},
        "metrics": folds[0],
        "checks": {"folds": len(folds), "one_sign_folds": one_sign, "capture": None},
        "folds": [{"fold": i, "metrics": m} for i, m in enumerate(folds)],
        "returns_csv": "returns.csv",
    }


def _write(folder: Path, report: dict, config: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture
def reports(tmp_path: Path) -> dict:
    """Two seeds of config A (the provenance hash differs by seed: the grouping must not use
    it where the resolved config is there), one run of config B, and a walk-forward of 3
    planted folds; returns the folders and the fold metrics written."""
    rng = random.Random(7)
    config_a = {"seed": 0, "training": {"total_timesteps": 64}, "env": {"window": 8}}
    config_b = {**config_a, "training": {"total_timesteps": 128}}
    a = [_metrics(rng), _metrics(rng)]
    b = [_metrics(rng)]
    wf = [_metrics(rng, oracle=True) for _ in range(3)]
    runs = tmp_path / "runs"
    _write(runs / "a0", _report("train", "a.yaml", "1" * 64, [a[0]], 1), config_a)
    _write(runs / "a1", _report("train", "a.yaml", "2" * 64, [a[1]], 0), {**config_a, "seed": 1})
    _write(tmp_path / "b", _report("train", "b.yaml", "3" * 64, b, 0), config_b)
    _write(tmp_path / "wf", _report("walkforward", "wf.yaml", "4" * 64, wf, 1))
    return {"root": tmp_path, "a": a, "b": b, "wf": wf}


def _stat(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def test_groups_by_config_with_the_mean_and_std_over_seeds_and_folds(reports, capsys):
    root = reports["root"]
    out = root / "cmp.json"
    args = ["compare", str(root / "runs"), str(root / "b"), str(root / "wf"), "--json", str(out)]
    assert console_main(args) == 0
    groups = json.loads(out.read_text())["groups"]
    assert [(g["label"], g["runs"], g["folds"], g["seeds"]) for g in groups] == [
        ("a.yaml", 2, 2, [0, 1]),
        ("b.yaml", 1, 1, [0]),
        ("wf.yaml", 1, 3, []),
    ]
    assert groups[2]["config_key"] == "4" * 64  # no resolved config: the provenance's hash
    for group, folds in zip(groups, (reports["a"], reports["b"], reports["wf"]), strict=True):
        for row in compare.ROWS:
            if row.key == "capture":
                continue
            mean, std = _stat([f[row.agent][row.key] for f in folds])
            got = group["metrics"][row.id]
            assert got["mean"] == pytest.approx(mean) and got["n"] == len(folds)
            assert got["std"] == (None if std is None else pytest.approx(std))
    capture = [f["policy"]["active_ir"] / f["oracle"]["active_ir"] for f in reports["wf"]]
    assert groups[2]["metrics"]["capture"]["mean"] == pytest.approx(np.mean(capture))
    assert groups[0]["metrics"]["capture"]["n"] == 0
    assert [g["one_sign_folds"] for g in groups] == [
        {"count": 1, "of": 2},
        {"count": 0, "of": 1},
        {"count": 1, "of": 3},
    ]
    # The console table shows the same numbers: the A group's net active IR, the folds k/n.
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("net active IR"))
    mean, std = _stat([f["policy"]["active_ir"] for f in reports["a"]])
    assert line.split()[3:6] == [f"{mean:+#.3g}", "±", f"{std:#.2g}"]
    one_sign = next(x for x in text.splitlines() if x.startswith("one-sign folds"))
    assert one_sign.split()[2:] == ["1/2", "0/1", "1/3"]


def test_the_console_table_fits_100_columns_and_wraps_groups(tmp_path, capsys):
    rng = random.Random(1)
    for i in range(9):
        config = {"seed": 0, "training": {"total_timesteps": 64 * (i + 1)}}
        name = f"a_config_with_a_rather_long_name_number_{i}.yaml"
        _write(tmp_path / f"r{i}", _report("train", name, "0" * 64, [_metrics(rng)], 0), config)
    assert compare.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert max(map(len, text.splitlines())) <= 100
    heads = [x for x in text.splitlines() if x.startswith(" ") and "] #" in x]
    assert len(heads) >= 2 and text.count("net active IR") == len(heads)  # blocks of groups
    assert heads[0].split()[:2] == [
        "[1]",
        f"#{compare.group_reports(compare.discover(tmp_path))[0].short}",
    ]
    assert all(f"[{i}] #" in text for i in range(1, 10))


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.open.append(tag)
        if tag in ("td", "th"):
            self.cells.append("")

    def handle_endtag(self, tag) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()

    def handle_data(self, data) -> None:
        if self.open and self.open[-1] in ("td", "th", "code"):
            self.cells[-1] += data


def test_html_is_the_same_table_as_a_self_contained_page(reports, capsys):
    root = reports["root"]
    page = root / "out" / "compare.html"
    assert compare.main([str(root), "--html", str(page)]) == 0
    text = page.read_text()
    assert not list(page.parent.glob(".*.tmp"))  # written atomically
    assert "<script" not in text and "http" not in text  # nothing to fetch
    parser = _Cells()
    body = text.split("\n", 1)[1]  # after the doctype, void tags aside
    parser.feed(body.replace("<br>", "").replace('<meta charset="utf-8">', ""))
    groups = compare.group_reports([r for r in compare.discover(root)])
    for name, cells in compare.table_rows(groups):
        i = parser.cells.index(name)
        assert parser.cells[i + 1 : i + 1 + len(cells)] == cells
    assert "wf.yaml" in parser.cells and "a.yaml" in parser.cells


def test_a_folder_with_no_report_is_one_line_naming_it(tmp_path, capsys):
    empty = tmp_path / "empty" / "run"
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text("seed: 0\n")
    assert console_main(["compare", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(empty) in err and "no report.json" in err
    assert compare.main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "report.json").write_text('{"policy": ')
    assert compare.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad / "report.json") in err and "JSON" in err
    (bad / "report.json").write_text('{"pooled": {}, "folds": [{"fold": 0}]}')
    assert compare.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'test'" in err


def test_reports_before_the_shared_schema_and_a_sweep(tmp_path):
    """A run's ``policy``/``baselines``, a walk-forward's ``pooled``/``folds`` (its config in
    the report), and a sweep's members by their values (seed left out)."""
    rng = random.Random(3)
    run = _metrics(rng)
    old_run = {"split": "test", "policy": run["policy"], "baselines": {"linear": run["linear"]}}
    _write(tmp_path / "run", {**old_run, "training": {}}, {"seed": 4, "env": {"window": 8}})
    folds = [_metrics(rng) for _ in range(2)]
    old_wf = {
        "config": {"seed": 2, "env": {"window": 16}},
        "folds": [{"fold": i, "test": m} for i, m in enumerate(folds)],
        "pooled": folds[0],
        "one_sign_folds": {"count": 2, "of": 2, "folds": [0, 1]},
    }
    _write(tmp_path / "wf", old_wf)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"config": {"seed": 0, "env": {}}}))
    members = []
    for m, (lr, seed) in enumerate([(1e-3, 0), (1e-3, 1), (1e-4, 0), (1e-4, 1), (1e-4, 2)]):
        metrics = _metrics(rng)
        members.append(
            {
                "member": m,
                "seed": seed,
                "status": "failed" if m == 4 else "ok",
                "values": {"training.actor_lr": lr},
                "test": metrics["policy"],
                "baselines": {k: v for k, v in metrics.items() if k != "policy"},
            }
        )
    (sweep / "leaderboard.json").write_text(json.dumps(members))
    _write(sweep / "best", {**old_run, "member": members[0]})  # a copy: not read again
    reports = compare.unique([r for p in (tmp_path, tmp_path / "run") for r in compare.discover(p)])
    groups = compare.group_reports(reports)
    summary = [(g.commands, len(g.runs), g.folds, g.seeds, g.one_sign) for g in groups]
    assert summary == [
        (["train"], 1, 1, [4], None),
        (["sweep"], 2, 2, [0, 1], None),
        (["sweep"], 2, 2, [0, 1], None),
        (["walkforward"], 1, 2, [2], (2, 2)),
    ]
    assert [g.label for g in groups[1:3]] == [
        "sweep training.actor_lr=0.001",
        "sweep training.actor_lr=0.0001",
    ]
    ir = groups[3].stat(compare.ROWS[0])
    assert ir.mean == pytest.approx(np.mean([f["policy"]["active_ir"] for f in folds]))
    sharpe = groups[1].stat(compare.Row("", "policy", "sharpe"))
    assert sharpe.mean == pytest.approx(np.mean([m["test"]["sharpe"] for m in members[:2]]))


@pytest.mark.slow
def test_compare_two_tiny_training_runs(tmp_path, capsys):
    """Two seeds of one tiny config, trained, then compared: one group of 2 runs whose mean
    is their reports' (whichever report shape train writes). About 25 s on 2 cores, mostly
    compiling."""
    from tiny_config import tiny

    from marl_jax import train as train_cli

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny()))
    for seed in (0, 1):
        args = ["--config", str(config), "--out", str(tmp_path / "runs" / f"s{seed}")]
        assert train_cli.main([*args, "--seed", str(seed), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "cmp.json"
    assert console_main(["compare", str(tmp_path / "runs"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert max(map(len, text.splitlines())) <= 100
    (group,) = json.loads(out.read_text())["groups"]
    assert (group["runs"], group["folds"], group["seeds"]) == (2, 2, [0, 1])
    sharpes = []
    for seed in (0, 1):
        report = json.loads((tmp_path / "runs" / f"s{seed}" / "report.json").read_text())
        metrics = report.get("metrics", report)
        sharpes.append(metrics["policy"]["sharpe"])
    assert group["metrics"]["sharpe"]["mean"] == pytest.approx(np.mean(sharpes))
