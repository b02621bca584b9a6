"""``marl-jax data``: the public bar files, listed and fetched (never downloaded by the tests:
the archive a download would bring is written by the test)."""

from __future__ import annotations

import io
import zipfile

from marl_jax.data import main
from marl_jax.env.data import load_bars
from marl_jax.run import datasets

STOCKS = (
    "Date,Open,High,Low,Close,Adj Close,Volume\n"
    "2009-05-26,198.5,199.5,196.2,196.9,196.9,3433700\n"
    "2009-05-27,196.9,202.7,195.2,202.4,202.4,6202700\n"
    "2009-05-28,203.0,206.7,202.6,204.4,204.4,6439400\n"
)


def test_list_names_every_file(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(datasets.SOURCES)


def test_fetch_extracts_converts_and_writes_out(tmp_path, capsys, monkeypatch):
    source = datasets.SOURCES["gym_googl_1d"]
    dist = tmp_path / "cache" / "dist"
    dist.mkdir(parents=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:  # what pip download would have put there
        z.writestr(f"gym_anytrading/datasets/data/{source.member}", STOCKS)
    (dist / f"gym_anytrading-{source.version}-py3-none-any.whl").write_bytes(buffer.getvalue())
    monkeypatch.setattr(datasets.subprocess, "run", lambda *a, **k: 1 / 0)  # no download
    out = tmp_path / "googl.csv"
    argv = ["fetch", "gym_googl_1d", "--out", str(out), "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    bars = load_bars(out)
    assert len(bars) == 3 and bars.close[-1] == 204.4 and bars.interval_minutes == 1440
    assert f"{out}: gym_googl_1d" in capsys.readouterr().out
    assert main(argv) == 0  # the converted file is cached: no archive needed now
    (dist / f"gym_anytrading-{source.version}-py3-none-any.whl").unlink()
    assert main(argv) == 0 and load_bars(out).close[-1] == 204.4


def test_an_unknown_name_is_one_line(tmp_path, capsys):
    assert main(["fetch", "googl", "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: googl: no such file; choose one of gym_eurusd_1h")
    assert err.count("\n") == 1 and not (tmp_path / "x.csv").exists()
