"""report.html, the tearsheet: a self-contained page from report.json and returns.csv, its
verdict line, monthly table and metrics, the older walk-forward report, and the command line's
one-line errors. (tests/test_tearsheet_browser.py renders it in Chromium.)"""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs
from tearsheet_run import PERIODS_PER_YEAR, make_run

from marl_jax import console
from marl_jax.metrics import alpha_beta, sharpe_ratio
from marl_jax.run.tearsheet import (
    MAX_POINTS,
    monthly_returns,
    rolling_active_ir,
    rolling_sharpe,
    rolling_window,
    write_tearsheet,
)
from marl_jax.tearsheet import main


def page(run_dir) -> str:
    return write_tearsheet(run_dir).read_text()


def verdict_of(text: str) -> str:
    return html.unescape(re.search(r'id="verdict">(.*?)</p>', text, re.S).group(1))


def test_the_page_is_self_contained_with_one_plotly_js(tmp_path):
    text = page(make_run(tmp_path / "run"))
    assert (tmp_path / "run" / "report.html").is_file()
    assert not list(tmp_path.joinpath("run").glob(".report.html.*"))  # written atomically
    srcs = re.findall(r"<script[^>]*\bsrc=", text, re.I)
    assert srcs == [], "the page loads no script from elsewhere"
    markup = re.sub(r"<script[^>]*>.*?</script>", "", text, flags=re.S | re.I)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup, re.I)
    assert "<link" not in markup and "@import" not in markup
    assert text.count("* plotly.js v") == 1  # the library's banner: one inlined copy
    assert text.count('class="plotly-graph-div"') == 1
    assert len(text) < 6_000_000


def test_the_verdict_reads_the_reports_active_ir_alpha_t_and_capture(tmp_path):
    run = make_run(tmp_path / "run")
    report = json.loads((run / "report.json").read_text())
    policy = report["metrics"]["policy"]
    words = verdict_of(page(run))
    assert words.startswith(f"net active IR {policy['active_ir']:+.2f}, ")
    assert f"alpha t {policy['alpha_t']:.1f}" in words
    assert f"captures {report['checks']['capture']:.0%} of the oracle's active IR" in words


def test_a_one_sign_policy_reads_as_a_scaled_buy_and_hold(tmp_path):
    words = verdict_of(page(make_run(tmp_path / "run", one_sign=True, folds=3)))
    assert words == "holds one sign in 3 of 3 test folds: a scaled buy-and-hold"


def test_a_short_one_sign_policy_is_named_so(tmp_path):
    run = make_run(tmp_path / "run", one_sign=True)
    frame = pd.read_csv(run / "returns.csv")
    frame["position"] = -frame["position"]
    frame.to_csv(run / "returns.csv", index=False)
    assert verdict_of(page(run)).endswith(": a scaled short of buy-and-hold")


def test_the_monthly_table_compounds_the_policys_returns(tmp_path):
    run = make_run(tmp_path / "run")
    text = page(run)
    frame = pd.read_csv(run / "returns.csv", parse_dates=["timestamp"])
    table = re.search(r'<table[^>]*class="[^"]*monthly.*?</table>', text, re.S).group(0)
    assert "<th>2021</th>" in table and "<th>2022</th>" in table and "<th>Year</th>" in table
    march = frame[(frame.timestamp.dt.year == 2021) & (frame.timestamp.dt.month == 3)]
    assert f"{math.expm1(march.policy.sum()) * 100:+.1f}</span>" in table
    year = frame[frame.timestamp.dt.year == 2021].policy.sum()
    assert f"{math.expm1(year) * 100:+.1f}</span>" in table


def test_monthly_returns_leaves_months_without_bars_empty():
    stamps = pd.Series(pd.to_datetime(["2020-01-02", "2020-01-03", "2020-03-02", "2021-02-01"]))
    table = monthly_returns(pd.Series([0.01, 0.02, -0.05, 0.1]), stamps)
    assert list(table.index) == [2020, 2021]
    assert table.loc[2020, "Jan"] == pytest.approx(math.expm1(0.03) * 100)
    assert np.isnan(table.loc[2020, "Feb"]) and np.isnan(table.loc[2021, "Jan"])
    assert table.loc[2020, "Year"] == pytest.approx(math.expm1(-0.02) * 100)


def test_the_metrics_table_holds_every_strategy_and_metric(tmp_path):
    run = make_run(tmp_path / "run")
    text = page(run)
    table = re.search(r'<table[^>]*class="[^"]*metrics.*?</table>', text, re.S).group(0)
    for name in ("policy", "buy &amp; hold", "flat", "linear", "oracle (planted)"):
        assert f"<th>{name}</th>" in table
    sharpe = json.loads((run / "report.json").read_text())["metrics"]["linear"]["sharpe"]
    assert f"<td>{sharpe:+.2f}</td>" in table
    for label in ("Sortino ratio", "deflated Sharpe ratio", "max drawdown", "bars evaluated"):
        assert label in table
    assert "ab12cd34ef56" in text and "quickstart" in text and "5216445aa000" in text


def test_rolling_ratios_match_the_metrics_over_the_last_window():
    rng = np.random.default_rng(3)
    bench = pd.Series(rng.normal(0.0005, 0.01, 400))
    policy = 0.4 * bench + pd.Series(rng.normal(0.0002, 0.005, 400))
    window = rolling_window(PERIODS_PER_YEAR, len(bench))
    assert window == 63
    last = slice(len(bench) - window, None)
    ir = rolling_active_ir(policy, bench, window, PERIODS_PER_YEAR)
    expected = alpha_beta(policy[last], bench[last], PERIODS_PER_YEAR)["active_ir"]
    assert ir.iloc[-1] == pytest.approx(expected, rel=1e-9)
    assert ir.iloc[: window - 1].isna().all()
    sharpe = rolling_sharpe(policy, window, PERIODS_PER_YEAR)
    assert sharpe.iloc[-1] == pytest.approx(sharpe_ratio(policy[last], PERIODS_PER_YEAR))
    # A scaled benchmark has no active return: 0, as the metrics say.
    assert rolling_active_ir(0.5 * bench, bench, window, PERIODS_PER_YEAR).iloc[-1] == 0.0
    assert rolling_window(PERIODS_PER_YEAR, 60) == 20
    assert rolling_window(12 * 252, 100_000) == 756


def variants():
    """Report edits the tearsheet must survive: (name, edit of report.json)."""

    def no_oracle(report):
        del report["metrics"]["oracle"]
        report["checks"]["capture"] = None

    def nan_metrics(report):
        report["metrics"]["policy"]["sortino"] = float("nan")
        report["metrics"]["policy"]["active_ir"] = float("nan")

    def older_walkforward(report):
        report["pooled"] = report.pop("metrics")
        one = report.pop("checks")["one_sign_folds"]
        report["one_sign_folds"] = {"count": one, "of": 2, "folds": []}
        del report["provenance"], report["schema_version"], report["command"]
        for fold in report["folds"]:
            fold["test"] = fold.pop("metrics")
            del fold["first_timestamp"], fold["last_timestamp"]
        report.update(data="data/spy.csv", data_sha256="feedbeef" * 8, n_bars=320)

    return [no_oracle, nan_metrics, older_walkforward]


@pytest.mark.parametrize("edit", variants(), ids=lambda f: f.__name__)
def test_the_page_survives_older_and_partial_reports(tmp_path, edit):
    run = make_run(tmp_path / "run")
    report = json.loads((run / "report.json").read_text())
    edit(report)
    (run / "report.json").write_text(json.dumps(report))
    text = page(run)
    words = verdict_of(text)
    assert words.startswith("net active IR ")
    if edit.__name__ == "no_oracle":
        assert "oracle" not in words
    if edit.__name__ == "nan_metrics":
        assert words.startswith("net active IR n/a, ")
        assert "<td>n/a</td>" in text
    if edit.__name__ == "older_walkforward":
        assert "feedbeef" in text and "(from the timestamps)" in text
        assert "<th>Year</th>" in text


def test_a_single_fold_without_oracle(tmp_path):
    text = page(make_run(tmp_path / "run", folds=1, oracle=False, n_bars=150))
    assert "fold 0" not in text  # no fold shading for one fold
    assert "Test folds" not in text
    assert verdict_of(text).startswith("net active IR ")


def test_a_long_run_is_thinned_for_display(tmp_path):
    run = make_run(tmp_path / "run", n_bars=4 * MAX_POINTS, folds=3)
    text = page(run)
    assert len(text) - len(get_plotlyjs()) < 1_000_000  # about 2.5 MB without thinning


def bad_inputs():
    """(name, how to break a run folder, words the error holds)."""
    return [
        ("no-report", lambda run: (run / "report.json").unlink(), "report.json: no such file"),
        ("not-json", lambda run: (run / "report.json").write_text("{oops"), "not a JSON report"),
        (
            "no-policy",
            lambda run: (run / "report.json").write_text('{"metrics": {}}'),
            "no metrics.policy",
        ),
        ("no-returns", lambda run: (run / "returns.csv").unlink(), "returns.csv: no such file"),
        (
            "no-policy-column",
            lambda run: (run / "returns.csv").write_text("timestamp,fold\n2021-01-04,0\n"),
            "no column policy",
        ),
        (
            "bad-timestamp",
            lambda run: (run / "returns.csv").write_text(
                "timestamp,fold,position,policy\n2021-01-04,0,1,0.1\nnot a date,0,1,0.2\n"
            ),
            "row 3 has timestamp 'not a date'",
        ),
        (
            "bad-number",
            lambda run: (run / "returns.csv").write_text(
                "timestamp,fold,position,policy\n2021-01-04,0,1,abc\n"
            ),
            "row 2, column 'policy' holds 'abc'",
        ),
    ]


@pytest.mark.parametrize("name,breaks,words", bad_inputs(), ids=[b[0] for b in bad_inputs()])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, capsys, name, breaks, words):
    run = make_run(tmp_path / "run", n_bars=60, folds=1)
    breaks(run)
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err
    assert not (run / "report.html").exists()


def test_marl_jax_report_builds_the_page(tmp_path, capsys):
    run = make_run(tmp_path / "run", n_bars=60, folds=1)
    assert console.main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    assert console.main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_several_instruments_chart_the_first_and_say_so(tmp_path):
    run = make_run(tmp_path / "run", n_bars=120)
    frame = pd.read_csv(run / "returns.csv")
    other = frame.assign(instrument="qqq.csv", policy=frame.policy * 2)
    pd.concat([frame, other]).to_csv(run / "returns.csv", index=False)
    text = page(run)
    assert "show spy.csv, the first of 2 instruments (spy.csv, qqq.csv)" in text
    table = re.search(r'<table[^>]*class="[^"]*monthly.*?</table>', text, re.S).group(0)
    january = frame[frame.timestamp.str.startswith("2021-01")].policy.sum()
    assert f"{math.expm1(january) * 100:+.1f}</span>" in table  # spy.csv's alone


def test_the_provenance_row_marks_a_commit_with_uncommitted_changes():
    from marl_jax.run.tearsheet import _commit_cell

    commit = "5216445aa" + "0" * 31
    assert _commit_cell(commit, False) == "5216445aa000"
    assert _commit_cell(commit, None) == "5216445aa000"  # an older report, without the key
    assert _commit_cell(commit, True) == "5216445aa000 (with uncommitted changes)"
    assert _commit_cell(None, True) == "n/a"
