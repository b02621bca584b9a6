"""The report contract's test: a folder's report.json against marl_jax/run/report.schema.json,
and its returns.csv against the report."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd

from marl_jax.run.report import REPORT_SCHEMA

RETURNS_COLUMNS = ["timestamp", "fold", "instrument", "position", "policy"]


def check_report(folder: Path, command: str) -> dict:
    """``folder/report.json`` valid under the schema, of ``command``, with ``returns.csv``
    holding a row per evaluated bar, the report's folds and agents, and ``report.html``;
    returns the report."""
    report = json.loads((folder / "report.json").read_text())
    jsonschema.validate(report, json.loads(REPORT_SCHEMA.read_text()))
    assert report["command"] == command
    frame = pd.read_csv(folder / report["returns_csv"])
    assert list(frame.columns[: len(RETURNS_COLUMNS)]) == RETURNS_COLUMNS
    baselines = [k for k in report["metrics"] if k != "policy"]
    assert set(baselines) <= set(frame.columns[len(RETURNS_COLUMNS) :])
    prov = report["provenance"]
    assert len(frame) == prov["bars"]
    stamps = pd.to_datetime(frame["timestamp"])
    assert str(stamps.min().isoformat()) == prov["first_timestamp"]
    assert str(stamps.max().isoformat()) == prov["last_timestamp"]
    assert sorted(frame["fold"].unique()) == [f["fold"] for f in report["folds"]]
    assert report["checks"]["folds"] == len(report["folds"])
    one_sign = [
        k
        for k, rows in frame.groupby("fold")
        if all(np.unique(np.sign(g["position"])).size == 1 for _, g in rows.groupby("instrument"))
    ]
    assert report["checks"]["one_sign_folds"] == len(one_sign)
    # The tearsheet beside it, built from these two files, with its verdict in words.
    page = (folder / "report.html").read_text()
    majority = len(one_sign) * 2 > len(report["folds"])
    assert ("holds one sign" in page) if majority else ("net active IR" in page)
    return report
