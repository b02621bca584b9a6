"""Planting a known edge into bars (marl_jax.env.plant), the command line and its sidecar
(marl_jax.plant, marl_jax.run.planted), and the oracle row and capture of the reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_contract import check_report

from marl_jax import metrics
from marl_jax.env import evaluate, market
from marl_jax.env.data import Bars, load_bars, synthetic_bars, validate_bars
from marl_jax.env.plant import (
    DEFAULT_SPANS,
    SIGMA_SPAN,
    SIGNALS,
    oracle_summary,
    plant,
    warmup_bars,
)
from marl_jax.plant import main
from marl_jax.run.planted import PlantError, read_oracle, sidecar_path

N = 1200


@pytest.fixture(scope="module")
def bars() -> Bars:
    return synthetic_bars(N, seed=3)


def _recomputed_signal(close: np.ndarray, signal: str, span: int) -> np.ndarray:
    """``s`` from the planted closes alone, written out from the module docstring's formulas."""
    log_c = np.log(close)
    r = np.r_[0.0, np.diff(log_c)]
    alpha = 2.0 / (SIGMA_SPAN + 1)
    var = np.zeros(len(close))
    var[1] = r[1] ** 2
    for t in range(2, len(close)):
        var[t] = (1 - alpha) * var[t - 1] + alpha * r[t] ** 2
    sigma = np.sqrt(var)
    s = np.zeros(len(close))
    t = np.arange(warmup_bars(span), len(close))
    z = (log_c[t] - log_c[t - span]) / (sigma[t] * np.sqrt(span))
    s[t] = {
        "trend": np.tanh(z),
        "revert": -np.tanh(z),
        "gated": np.where(np.abs(z) > 1, np.sign(z), 0.0),
    }[signal]
    return s


# ----------------------------------------------------------------------------- the recipes


@pytest.mark.parametrize("signal", SIGNALS)
def test_planted_returns_are_the_files_plus_a_sigma_s_one_bar_later(bars, signal):
    strength = 0.3
    p = plant(bars, signal, strength)
    s, sigma = p.signal, p.sigma
    assert np.all(np.abs(s) <= 1) and np.all(np.isfinite(s))
    warm = warmup_bars(DEFAULT_SPANS[signal])
    assert np.all(s[:warm] == 0) and np.count_nonzero(s[warm:]) > (N - warm) // 4
    if signal == "gated":
        assert set(np.unique(s)) <= {-1.0, 0.0, 1.0} and np.any(s == 0) and np.any(s != 0)
    added = np.diff(np.log(p.bars.close)) - np.diff(np.log(bars.close))
    np.testing.assert_allclose(added, strength * sigma[:-1] * s[:-1], rtol=0, atol=1e-12)
    # s reads the planted closes only, as the formulas say.
    np.testing.assert_allclose(
        s, _recomputed_signal(p.bars.close, signal, DEFAULT_SPANS[signal]), atol=1e-9
    )


def test_revert_is_the_last_planted_return_reversed(bars):
    p = plant(bars, "revert", 0.2)
    r = np.diff(np.log(p.bars.close))
    t = np.arange(SIGMA_SPAN, N)
    np.testing.assert_allclose(p.signal[t], -np.tanh(r[t - 1] / p.sigma[t]), atol=1e-9)
    # A fast edge: the oracle changes position on most bars.
    assert oracle_summary(p.bars, p.signal)["turnover"] > 0.5


@pytest.mark.parametrize("signal", SIGNALS)
def test_changing_later_bars_leaves_the_past_bit_identical(bars, signal):
    t = 700
    factor = np.r_[np.ones(t + 1), np.exp(np.linspace(0.0, 0.2, N - t - 1))]
    later = Bars(
        bars.timestamp,
        bars.open * factor,
        bars.high * factor,
        bars.low * factor,
        bars.close * factor,
        bars.volume[::-1],
    )
    a, b = plant(bars, signal, 0.5), plant(later, signal, 0.5)
    assert not np.array_equal(a.signal, b.signal)
    np.testing.assert_array_equal(a.signal[: t + 1], b.signal[: t + 1])
    np.testing.assert_array_equal(a.sigma[: t + 1], b.sigma[: t + 1])
    np.testing.assert_array_equal(a.bars.close[: t + 1], b.bars.close[: t + 1])
    # Bar t + 1's planted drift is fixed at bar t: the same factor on its (changed) close.
    ratio = lambda p, src: p.bars.close[: t + 2] / src.close[: t + 2]  # noqa: E731
    np.testing.assert_array_equal(ratio(a, bars), ratio(b, later))


@pytest.mark.parametrize("signal", SIGNALS)
def test_strength_zero_gives_the_bars_back(bars, signal):
    p = plant(bars, signal, 0.0)
    for field in ("timestamp", "open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(p.bars, field), getattr(bars, field))


def test_ohlc_keep_their_ratios_to_the_close_volume_and_time_unchanged(bars):
    p = plant(bars, "trend", 1.0)
    assert not np.allclose(p.bars.close, bars.close)
    for field in ("open", "high", "low"):
        np.testing.assert_allclose(
            getattr(p.bars, field) / p.bars.close, getattr(bars, field) / bars.close, rtol=1e-14
        )
    np.testing.assert_array_equal(p.bars.volume, bars.volume)
    np.testing.assert_array_equal(p.bars.timestamp, bars.timestamp)
    validate_bars(p.bars)


def test_span_and_strength_change_the_edge(bars):
    short, default = plant(bars, "trend", 0.3, span=5), plant(bars, "trend", 0.3)
    assert not np.array_equal(short.signal, default.signal)
    weak = oracle_summary(plant(bars, "trend", 0.05).bars, plant(bars, "trend", 0.05).signal)
    strong = oracle_summary(default.bars, default.signal)
    assert strong["active_ir"] > weak["active_ir"] + 1
    with pytest.raises(ValueError, match="unknown signal"):
        plant(bars, "drift", 0.1)
    with pytest.raises(ValueError, match="strength"):
        plant(bars, "trend", -0.1)


def test_oracle_summary_is_the_sign_of_s_net_of_costs(bars):
    p = plant(bars, "revert", 0.3)
    next_r = np.diff(np.log(p.bars.close))
    pos = np.sign(p.signal[:-1])
    net = pos * next_r - 2.0 * 1e-4 * np.abs(np.diff(np.r_[0.0, pos]))
    o = oracle_summary(p.bars, p.signal, cost_bps=2.0)
    ppy = market.bars_per_year(p.bars)  # the bars' own calendar
    assert ppy == pytest.approx(365.25 * 48)
    assert o["sharpe"] == pytest.approx(metrics.sharpe_ratio(net, ppy), rel=1e-12)
    assert o["gross_sharpe"] == pytest.approx(metrics.sharpe_ratio(pos * next_r, ppy), rel=1e-12)
    assert o["turnover"] == pytest.approx(metrics.turnover(pos))
    assert o["gross_sharpe"] > o["sharpe"]  # costs matter for a fast edge


# -------------------------------------------------------------------------- the command line


def _write(path: Path, bars: Bars, extra: bool = True) -> Path:
    frame = bars.to_frame()
    if extra:
        frame["note"] = "x"
    if path.suffix == ".parquet":
        frame.set_index("timestamp").to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def test_cli_writes_out_and_its_sidecar_and_prints_the_oracle(tmp_path, bars, capsys):
    src = _write(tmp_path / "in.csv", bars)
    out = tmp_path / "out.csv"
    argv = [str(src), str(out), "--signal", "gated", "--strength", "0.2", "--span", "10"]
    assert main([*argv, "--cost-bps", "2"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv", "out.csv.plant.json"]

    before, after = pd.read_csv(src), pd.read_csv(out)
    assert list(after.columns) == list(before.columns)
    for col in ("timestamp", "volume", "note"):
        assert after[col].equals(before[col])
    planted = plant(bars, "gated", 0.2, span=10)
    np.testing.assert_array_equal(after["close"].to_numpy(), planted.bars.close)

    record = json.loads(sidecar_path(out).read_text())
    assert record["recipe"]["signal"] == "gated" and record["recipe"]["span"] == 10
    assert record["recipe"]["strength"] == 0.2 and record["recipe"]["sigma_span"] == SIGMA_SPAN
    assert record["input"]["file"] == "in.csv" and len(record["input"]["sha256"]) == 64
    assert record["version"] and record["oracle"]["cost_bps"] == 2.0
    np.testing.assert_array_equal(record["s"], planted.signal)
    oracle = oracle_summary(load_bars(out), np.asarray(record["s"]), 2.0)
    for key in ("gross_sharpe", "sharpe", "active_ir", "turnover"):
        assert record["oracle"][key] == pytest.approx(oracle[key], rel=1e-12)
    line = printed.splitlines()[-1]
    assert f"gross Sharpe {oracle['gross_sharpe']:.4f}" in line
    assert f"net Sharpe {oracle['sharpe']:.4f}" in line
    assert f"net active IR {oracle['active_ir']:.4f}" in line
    assert f"turnover {oracle['turnover']:.4f}" in line
    # The cost moves the net figures, not the gross ones.
    assert main([*argv, "--cost-bps", "0"]) == 0
    free = json.loads(sidecar_path(out).read_text())["oracle"]
    assert free["gross_sharpe"] == record["oracle"]["gross_sharpe"]
    assert free["sharpe"] > record["oracle"]["sharpe"]
    # The file and the sidecar go together: the run layer reads s back for these bars.
    np.testing.assert_array_equal(read_oracle(out, load_bars(out)), planted.signal)


def test_cli_strength_zero_gives_the_file_back(tmp_path, bars):
    src = _write(tmp_path / "in.csv", bars)
    out = tmp_path / "same.csv"
    assert main([str(src), str(out), "--signal", "trend", "--strength", "0"]) == 0
    assert pd.read_csv(out).equals(pd.read_csv(src))


def test_cli_parquet_keeps_the_index_and_columns(tmp_path, bars):
    src = _write(tmp_path / "in.parquet", bars)
    out = tmp_path / "out.parquet"
    assert main([str(src), str(out), "--signal", "revert", "--strength", "0.1"]) == 0
    before, after = pd.read_parquet(src), pd.read_parquet(out)
    assert after.index.equals(before.index) and list(after.columns) == list(before.columns)
    assert after["volume"].equals(before["volume"]) and after["note"].equals(before["note"])
    np.testing.assert_allclose(after["open"] / after["close"], before["open"] / before["close"])
    assert not np.allclose(after["close"], before["close"])


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["missing.csv", "o.csv", "--signal", "trend", "--strength", "1"], "file not found"),
        (["in.csv", "o.csv", "--signal", "drift", "--strength", "1"], "--signal drift"),
        (["in.csv", "o.csv", "--signal", "trend", "--strength", "-1"], "--strength -1"),
        (["in.csv", "o.csv", "--signal", "trend", "--strength", "nan"], "--strength nan"),
        (["in.csv", "o.csv", "--signal", "trend", "--strength", "x"], "--strength"),
        (["in.csv", "o.csv", "--signal", "trend", "--strength", "1", "--span", "0"], "--span 0"),
        (["in.csv", "no/o.csv", "--signal", "trend", "--strength", "1"], "does not exist"),
        (["in.csv", "o.xlsx", "--signal", "trend", "--strength", "1"], "unsupported file type"),
        (["in.csv", "in.csv", "--signal", "trend", "--strength", "1"], "is the input file"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, bars, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "in.csv", bars)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors (a value that is not a number)
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.startswith("error: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # nothing written


# ------------------------------------------------------------------- the oracle in the reports


def test_the_oracle_baseline_trades_the_sign_of_s(bars):
    p = plant(bars, "trend", 0.3)
    params = market.make_env_params(p.bars, "test", window=8)
    runs = evaluate.evaluate_baselines(params, oracle=p.signal)
    assert list(runs) == [*(b for b in evaluate.BASELINES if b != "linear"), evaluate.ORACLE]
    oracle = runs[evaluate.ORACLE]
    np.testing.assert_array_equal(oracle.positions, np.sign(p.signal[oracle.bar_index]))
    assert evaluate.ORACLE not in evaluate.evaluate_baselines(params)
    assert oracle.metrics["active_ir"] > 2
    by_name = {"policy": {"active_ir": 1.5}, evaluate.ORACLE: {"active_ir": 3.0}}
    assert evaluate.capture(by_name) == 0.5
    assert evaluate.capture({"policy": {"active_ir": 1.5}}) is None
    with pytest.raises(ValueError, match="oracle has"):
        evaluate.run_baseline(evaluate.ORACLE, params, oracle=p.signal[:-1])


def test_read_oracle_refuses_a_stale_or_misaligned_sidecar(tmp_path, bars):
    src = _write(tmp_path / "in.csv", bars)
    assert read_oracle(src, bars) is None  # no sidecar
    out = tmp_path / "out.csv"
    assert main([str(src), str(out), "--signal", "trend", "--strength", "0.1"]) == 0
    with pytest.raises(PlantError, match="not the 600 loaded"):
        read_oracle(out, load_bars(out, resample_minutes=60))
    out.write_text(out.read_text().replace("x\n", "y\n", 1))
    with pytest.raises(PlantError, match="changed since it was planted"):
        read_oracle(out, load_bars(out))


def test_a_run_reads_each_instruments_sidecar(tmp_path, bars):
    from marl_jax.config import config_from_dict
    from marl_jax.run.setup import load_markets, load_oracles
    from tests.tiny_config import tiny

    raw = _write(tmp_path / "raw.csv", bars)
    planted = tmp_path / "planted.csv"
    assert main([str(raw), str(planted), "--signal", "gated", "--strength", "0.2"]) == 0
    s = np.asarray(json.loads(sidecar_path(planted).read_text())["s"])
    cfg = config_from_dict(tiny(env={"data_paths": [str(planted), str(raw)]}))
    oracles = load_oracles(cfg, load_markets(cfg))
    assert list(oracles) == ["planted.csv", "raw.csv"] and oracles["raw.csv"] is None
    np.testing.assert_array_equal(oracles["planted.csv"], s)
    synthetic = config_from_dict(tiny())
    assert load_oracles(synthetic, load_markets(synthetic)) == {"synthetic": None}


@pytest.mark.slow
def test_walk_forward_reports_the_oracle_and_capture(tmp_path, capsys):
    import yaml

    from marl_jax.walkforward.__main__ import main as walkforward
    from tests.tiny_config import tiny

    bars = synthetic_bars(1500, seed=0)
    src = _write(tmp_path / "raw.csv", bars, extra=False)
    data = tmp_path / "planted.csv"
    assert main([str(src), str(data), "--signal", "trend", "--strength", "0.3"]) == 0
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny(checkpoint={"save_every": 1})))
    out = tmp_path / "wf"
    argv = ["--config", str(cfg), "--data", str(data), "--folds", "2", "--out", str(out)]
    assert walkforward([*argv, "--no-progress"]) == 0
    table = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    frame = pd.read_csv(out / "returns.csv")
    assert "oracle" in frame.columns and "oracle" in report["metrics"]
    check_report(out, "walkforward")
    assert "capture (policy active IR / oracle active IR)" in table

    # The oracle's returns, recomputed from the sidecar's s and the planted closes.
    s = np.asarray(json.loads(sidecar_path(data).read_text())["s"])
    planted = load_bars(data)
    log_r = np.r_[0.0, np.diff(np.log(planted.close))].astype(np.float32)
    stamps = pd.to_datetime(frame["timestamp"]).to_numpy("datetime64[ns]")
    t = np.searchsorted(planted.timestamp, stamps)
    parts = []
    for _, idx in frame.groupby("fold").indices.items():
        pos = np.sign(s[t[idx]]).astype(np.float32)
        parts.append(metrics.net_returns(pos * log_r[t[idx] + 1], pos, 1.0))
    net = np.concatenate(parts)
    np.testing.assert_allclose(frame["oracle"].to_numpy(), net, rtol=1e-6, atol=1e-9)

    # The report's figures are those of the stitched returns.
    pos = np.sign(s[t])
    bench = frame["buy_and_hold"].to_numpy()
    ppy = market.bars_per_year(planted)  # the bar file's own calendar
    pooled = report["metrics"]
    assert pooled["oracle"]["sharpe"] == pytest.approx(metrics.sharpe_ratio(net, ppy), rel=1e-5)
    ab = metrics.alpha_beta(frame["oracle"].to_numpy(), bench, ppy)
    assert pooled["oracle"]["active_ir"] == pytest.approx(ab["active_ir"], rel=1e-4)
    assert pooled["oracle"]["turnover"] == pytest.approx(metrics.turnover(pos), rel=1e-6)
    assert pooled["oracle"]["active_ir"] > 1  # a planted edge the oracle does find
    capture = report["checks"]["capture"]
    assert capture == pytest.approx(pooled["policy"]["active_ir"] / pooled["oracle"]["active_ir"])
    for fold in report["folds"]:
        test = fold["metrics"]
        assert fold["capture"] == pytest.approx(
            test["policy"]["active_ir"] / test["oracle"]["active_ir"]
        )
    assert math.isfinite(capture)

    # The honesty checks: one-sign folds, and the correlation with the oracle's position
    # (sign of the sidecar's s), from returns.csv.
    signs = np.sign(frame["position"]).groupby(frame["fold"]).nunique()
    checks = report["checks"]
    assert checks["folds"] == 2 and checks["one_sign_folds"] == int((signs == 1).sum())
    assert checks["one_sign_fold_numbers"] == list(signs.index[signs == 1])
    position = frame["position"].to_numpy(np.float64)
    if position.std() > 0:
        expected = np.corrcoef(position, pos)[0, 1]
        assert checks["oracle_correlation"] == pytest.approx(expected, rel=1e-6)
    else:
        assert checks["oracle_correlation"] is None
    assert f"one-sign test folds: {checks['one_sign_folds']} of 2" in table
