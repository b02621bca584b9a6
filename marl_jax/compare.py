"""``python -m marl_jax.compare``: one table of many runs', sweeps' and walk-forwards' reports.

Each argument is a training run's folder, a sweep's, a walk-forward's (or a folder holding
several of them), or a ``report.json``. Every report under a folder is read (the shallowest one
on each branch: a walk-forward's folds are its own); a sweep's folder (``leaderboard.json``)
gives one entry per finished member. The reports are grouped by config and each group shows
the mean and standard deviation of the key metrics over its runs' test folds (one fold for a
training run, a backtest or a sweep member; each test fold of a walk-forward).

A config is the run's resolved config without its ``seed`` (a run's ``config.yaml``, a
walk-forward's ``config``, a sweep's base config with the member's values), so that runs which
differ only by seed group together; where no resolved config is stored, the report's
``provenance.config_sha256``. Reads the shared report schema (version 1: ``metrics``,
``folds``, ``checks``, ``provenance``) and the shapes before it (a run's ``policy`` and
``baselines``; a walk-forward's ``pooled`` and ``folds``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import html
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from marl_jax.errors import MarlJaxError, cli_main
from marl_jax.files import atomic_write_text

__all__ = [
    "ROWS",
    "CompareError",
    "Group",
    "Row",
    "RunReport",
    "Stat",
    "compare_json",
    "discover",
    "format_table",
    "group_reports",
    "html_page",
    "main",
    "read_report",
    "unique",
]

REPORT = "report.json"
LEADERBOARD = "leaderboard.json"
WIDTH = 100  # the console table's columns at most


class CompareError(MarlJaxError, ValueError):
    """A path that holds no report, or a report that cannot be read; one line."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One metric of the table: ``key`` of ``agent``'s metrics (``capture`` is computed)."""

    label: str
    agent: str
    key: str

    @property
    def id(self) -> str:
        return self.key if self.agent == "policy" else f"{self.agent}.{self.key}"


# The table's metrics, the policy's first, then the baselines' for reference (buy-and-hold's
# active IR is left out: buy-and-hold is the benchmark the active metrics are measured against).
ROWS = (
    Row("net active IR", "policy", "active_ir"),
    Row("Sharpe", "policy", "sharpe"),
    Row("alpha t", "policy", "alpha_t"),
    Row("total log return", "policy", "total_log_return"),
    Row("max drawdown", "policy", "max_drawdown"),
    Row("turnover", "policy", "turnover"),
    Row("capture", "policy", "capture"),
    Row("buy&hold Sharpe", "buy_and_hold", "sharpe"),
    Row("linear active IR", "linear", "active_ir"),
    Row("linear Sharpe", "linear", "sharpe"),
)


@dataclasses.dataclass(frozen=True)
class RunReport:
    """One run's report, as the table needs it.

    ``folds`` holds each test fold's metrics by agent (``policy``, ``buy_and_hold``, ...);
    ``one_sign`` is ``(folds whose position never changes sign, folds checked)`` where the
    report has the check; ``capture`` the report's own (pooled) capture, if any.
    """

    source: str
    command: str
    label: str
    config_key: str
    seed: int | None
    folds: tuple[Mapping[str, Mapping[str, Any]], ...]
    one_sign: tuple[int, int] | None = None
    capture: float | None = None


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None under 2 values) of ``n`` values."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        xs = [float(v) for v in values]
        if not xs:
            return cls(None, None, 0)
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


@dataclasses.dataclass(frozen=True)
class Group:
    """The runs of one config and their metrics' statistics over seeds and folds."""

    key: str
    label: str
    runs: tuple[RunReport, ...]

    @property
    def short(self) -> str:
        return self.key[:8]

    @property
    def folds(self) -> int:
        return sum(len(r.folds) for r in self.runs)

    @property
    def commands(self) -> list[str]:
        return sorted({r.command for r in self.runs})

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs if r.seed is not None})

    @property
    def one_sign(self) -> tuple[int, int] | None:
        checked = [r.one_sign for r in self.runs if r.one_sign is not None]
        if not checked:
            return None
        return sum(k for k, _ in checked), sum(n for _, n in checked)

    def stat(self, row: Row) -> Stat:
        if row.key == "capture":
            return Stat.of(v for r in self.runs for v in _captures(r))
        values = (fold.get(row.agent, {}).get(row.key) for r in self.runs for fold in r.folds)
        return Stat.of(v for v in values if _finite(v))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _captures(run: RunReport) -> list[float]:
    """The policy's net active IR over the oracle's in each fold that has the oracle (none
    where the oracle's is 0); else the report's own capture, if any."""
    out = []
    for fold in run.folds:
        policy, oracle = fold.get("policy", {}), fold.get("oracle", {})
        a, b = policy.get("active_ir"), oracle.get("active_ir")
        if _finite(a) and _finite(b) and b != 0:
            out.append(a / b)
    if not any("oracle" in fold for fold in run.folds) and _finite(run.capture):
        out.append(float(run.capture))
    return out


# Reading reports --------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise CompareError(f"{path}: cannot be read ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        why = f"{path}: not valid JSON ({err}); is the command still writing it?"
        raise CompareError(why) from None


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        why = " ".join(str(err).split())
        raise CompareError(f"{path}: cannot be read as YAML ({why})") from None


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def config_key(config: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> str:
    """The SHA-256 that groups runs: of the resolved ``config`` without its seed, with a sweep
    member's ``values`` (its dotted overrides) where given."""
    base = {k: v for k, v in config.items() if k != "seed"}
    extra = {k: v for k, v in (values or {}).items() if k != "seed"}
    return _digest({"config": base, "values": extra} if extra else base)


def _shape(data: Mapping, path: Path) -> tuple[list[Mapping], Mapping | None, Any]:
    """``(folds' metrics by agent, checks or None, capture)`` of any report shape."""
    if isinstance(data.get("metrics"), Mapping) and "policy" in data["metrics"]:
        folds = [f["metrics"] for f in data.get("folds") or [] if "metrics" in f]
        checks = data.get("checks") or {}
        return folds or [data["metrics"]], checks, checks.get("capture")
    if "pooled" in data and isinstance(data.get("folds"), list):  # a walk-forward's, before
        one = data.get("one_sign_folds") or {}
        checks = {"one_sign_folds": one.get("count"), "folds": one.get("of")} if one else None
        return [f["test"] for f in data["folds"]], checks, data.get("capture")
    if "policy" in data and isinstance(data.get("baselines"), Mapping):  # a run's, before
        return [{"policy": data["policy"], **data["baselines"]}], None, data.get("capture")
    raise CompareError(
        f"{path}: not a marl-jax report (no 'metrics', 'pooled' or 'policy' key); pass a "
        "training run's, sweep's or walk-forward's folder or its report.json"
    )


def _resolved_config(data: Mapping, path: Path) -> Mapping | None:
    """The run's resolved config: its ``config.yaml``, or a walk-forward's recorded one."""
    if (path.parent / "config.yaml").is_file():
        config = _load_yaml(path.parent / "config.yaml")
        return config if isinstance(config, Mapping) else None
    if isinstance(data.get("config"), Mapping):
        return data["config"]
    manifest = path.parent / "walkforward.json"
    if manifest.is_file():
        config = _load_json(manifest).get("config")
        return config if isinstance(config, Mapping) else None
    return None


def _sweep_base(folder: Path) -> Mapping | None:
    """A sweep's base config (its ``sweep.yaml``), or None."""
    record = folder / "sweep.yaml"
    if not record.is_file():
        return None
    config = (_load_yaml(record) or {}).get("config")
    return config if isinstance(config, Mapping) else None


def _values_text(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items() if k != "seed")


def read_report(path: str | os.PathLike[str]) -> RunReport:
    """One ``report.json`` (any command's; see the module docstring)."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, Mapping):
        raise CompareError(f"{path}: not a marl-jax report (a JSON object was expected)")
    try:
        folds, checks, capture = _shape(data, path)
    except (KeyError, TypeError, AttributeError) as err:
        raise CompareError(
            f"{path}: a report this version cannot read (at {err!s}); is it a marl-jax report?"
        ) from None
    provenance = data.get("provenance") or {}
    member = data.get("member") if isinstance(data.get("member"), Mapping) else None
    config, values, seed = _resolved_config(data, path), None, None
    if member is not None and config is None:  # a sweep's best or top member
        config, values = _sweep_base(path.parent.parent), member.get("values") or {}
    if config is not None:
        key, seed = config_key(config, values), config.get("seed")
    elif provenance.get("config_sha256"):
        key = str(provenance["config_sha256"])
    else:
        key = _digest(str(path.resolve()))  # nothing says which config: a group of its own
    if member is not None:
        seed = member.get("seed", seed)
    label = str(provenance.get("config") or path.parent.name or path.name)
    if values:
        label = f"{label} {_values_text(values)}"
    one_sign = None
    if checks and _finite(checks.get("one_sign_folds")) and _finite(checks.get("folds")):
        one_sign = (int(checks["one_sign_folds"]), int(checks["folds"]))
    return RunReport(
        source=str(path),
        command=str(data.get("command") or _old_command(data)),
        label=label,
        config_key=key,
        seed=int(seed) if _finite(seed) else None,
        folds=tuple(folds),
        one_sign=one_sign,
        capture=float(capture) if _finite(capture) else None,
    )


def _old_command(data: Mapping) -> str:
    """The command that wrote a report from before the shared schema."""
    if "pooled" in data:
        return "walkforward"
    if "member" in data:
        return "sweep"
    return "train" if "training" in data else "backtest"


def read_sweep(folder: Path) -> list[RunReport]:
    """A sweep's finished members (its ``leaderboard.json``), each as a run of one fold."""
    rows = _load_json(folder / LEADERBOARD)
    if not isinstance(rows, list):
        raise CompareError(f"{folder / LEADERBOARD}: a list of members was expected")
    base = _sweep_base(folder)
    best = folder / "best" / REPORT
    provenance = (_load_json(best).get("provenance") or {}) if best.is_file() else {}
    name = str(provenance.get("config") or folder.name)
    out = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        if not isinstance(row.get("test"), Mapping):
            raise CompareError(
                f"{folder / LEADERBOARD}: member {row.get('member')} has no 'test' metrics; "
                "is it a marl-jax sweep's leaderboard?"
            )
        values = row.get("values") or {}
        if base is not None:
            key = config_key(base, values)
        else:
            key = _digest({"sweep": str(folder.resolve()), "values": values})
        label = f"{name} {_values_text(values)}".strip()
        out.append(
            RunReport(
                source=f"{folder / LEADERBOARD}#member{row.get('member')}",
                command="sweep",
                label=label,
                config_key=key,
                seed=int(row["seed"]) if _finite(row.get("seed")) else None,
                folds=({"policy": row["test"], **(row.get("baselines") or {})},),
            )
        )
    return out


def discover(path: str | os.PathLike[str]) -> list[RunReport]:
    """Every report under ``path`` (a report file, or a folder: see the module docstring)."""
    root = Path(path)
    if root.is_file():
        return [read_report(root)]
    if not root.is_dir():
        raise CompareError(f"{root}: no such file or folder")
    found: list[RunReport] = []
    for folder, subdirs, files in os.walk(root):
        here = Path(folder)
        if LEADERBOARD in files:
            found += read_sweep(here)
            subdirs.clear()
        elif REPORT in files:
            found.append(read_report(here / REPORT))
            subdirs.clear()
        else:
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    if not found:
        raise CompareError(
            f"{root}: no report.json under it; pass a finished training run's, sweep's or "
            "walk-forward's folder"
        )
    return found


def unique(reports: Iterable[RunReport]) -> list[RunReport]:
    """``reports`` without repeats (a folder passed twice, or inside another one passed)."""
    seen, out = set(), []
    for r in reports:
        path, mark, member = r.source.partition("#")
        ident = (os.path.realpath(path), mark + member)
        if ident not in seen:
            seen.add(ident)
            out.append(r)
    return out


def group_reports(reports: Sequence[RunReport]) -> list[Group]:
    """The reports grouped by config and command, in the order each first appears."""
    by_key: dict[tuple[str, str], list[RunReport]] = {}
    for r in reports:
        by_key.setdefault((r.config_key, r.command), []).append(r)
    return [Group(key, runs[0].label, tuple(runs)) for (key, _), runs in by_key.items()]


# Output -----------------------------------------------------------------------------------


def _number(x: float) -> str:
    return "0" if x == 0 else f"{x:+#.3g}"


def cell(stat: Stat) -> str:
    """``mean ± std`` (just the mean for one value; ``-`` for none)."""
    if stat.mean is None:
        return "-"
    if stat.std is None:
        return _number(stat.mean)
    return f"{_number(stat.mean)} ± {stat.std:#.2g}"


def _one_sign_text(group: Group) -> str:
    one = group.one_sign
    return "-" if one is None else f"{one[0]}/{one[1]}"


def table_rows(groups: Sequence[Group]) -> list[tuple[str, list[str]]]:
    """The table as ``(label, one cell per group)`` rows, counts first."""
    rows = [
        ("runs", [str(len(g.runs)) for g in groups]),
        ("folds", [str(g.folds) for g in groups]),
    ]
    rows += [(row.label, [cell(g.stat(row)) for g in groups]) for row in ROWS]
    rows.append(("one-sign folds", [_one_sign_text(g) for g in groups]))
    return rows


def _fit(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def legend(groups: Sequence[Group]) -> list[str]:
    """One line per group: its number, label, hash, commands, runs, seeds and folds."""
    lines = []
    for i, g in enumerate(groups, 1):
        seeds = f"seed{'s' if len(g.seeds) > 1 else ''} {', '.join(map(str, g.seeds))}"
        runs = f"{_plural(len(g.runs), 'run')} ({seeds if g.seeds else 'seed unknown'})"
        commands = "/".join(g.commands)
        lines.append(
            _fit(f"[{i}] #{g.short} {commands}: {runs}, {_plural(g.folds, 'fold')}: {g.label}")
        )
    return lines


def format_table(groups: Sequence[Group]) -> str:
    """The groups' table, metrics down and groups across, wrapped to :data:`WIDTH` columns."""
    rows = table_rows(groups)
    label = max(len(name) for name, _ in rows) + 2
    heads = [f"[{i}] #{g.short}" for i, g in enumerate(groups, 1)]
    column = max(len(c) for c in [*heads, *(c for _, cells in rows for c in cells)]) + 2
    per_block = max(1, (WIDTH - label) // column)
    runs = sum(len(g.runs) for g in groups)
    lines = [
        f"{_plural(len(groups), 'config')} of {_plural(runs, 'run')}: the mean ± std over "
        "seeds and test folds",
        *legend(groups),
    ]
    for start in range(0, len(groups), per_block):
        part = slice(start, start + per_block)
        lines += ["", f"{'':{label}s}" + "".join(f"{h:>{column}s}" for h in heads[part])]
        for name, cells in rows:
            lines.append(f"{name:{label}s}" + "".join(f"{c:>{column}s}" for c in cells[part]))
    return "\n".join(lines)


def compare_json(groups: Sequence[Group]) -> dict:
    """The table as JSON: each group's runs and each metric's mean, std and count."""

    def stat_dict(s: Stat) -> dict:
        return {"mean": s.mean, "std": s.std, "n": s.n}

    return {
        "groups": [
            {
                "config_key": g.key,
                "label": g.label,
                "commands": g.commands,
                "runs": len(g.runs),
                "folds": g.folds,
                "seeds": g.seeds,
                "reports": [r.source for r in g.runs],
                "metrics": {row.id: stat_dict(g.stat(row)) for row in ROWS},
                "one_sign_folds": None
                if g.one_sign is None
                else {"count": g.one_sign[0], "of": g.one_sign[1]},
            }
            for g in groups
        ]
    }


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f3f3f3; text-align: left; }
code { font-size: 0.9em; }
"""


def html_page(groups: Sequence[Group], title: str = "marl-jax compare") -> str:
    """The same table as a self-contained HTML page, with the groups' reports listed."""
    esc = html.escape
    legend_rows = "".join(
        f"<tr><th>[{i}]</th><td><code>{esc(g.short)}</code></td><td>{esc(g.label)}</td>"
        f"<td>{esc('/'.join(g.commands))}</td>"
        f"<td>{esc(', '.join(map(str, g.seeds)) or '-')}</td>"
        f"<td>{'<br>'.join(f'<code>{esc(r.source)}</code>' for r in g.runs)}</td></tr>"
        for i, g in enumerate(groups, 1)
    )
    heads = "".join(f"<th>[{i}] <code>#{esc(g.short)}</code></th>" for i, g in enumerate(groups, 1))
    body_rows = "".join(
        f"<tr><th>{esc(name)}</th>"
        + "".join(f'<td class="num">{esc(c)}</td>' for c in cells)
        + "</tr>"
        for name, cells in table_rows(groups)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        "<p>Reports grouped by config (runs that differ only by seed together); each cell is "
        "the mean ± standard deviation over the group's seeds and test folds.</p>"
        "<table><tr><th></th><th>config hash</th><th>config</th><th>command</th>"
        f"<th>seeds</th><th>reports</th></tr>{legend_rows}</table>"
        f"<table><tr><th></th>{heads}</tr>{body_rows}</table>"
        "</body></html>\n"
    )


# Command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.compare",
        description="One table of the reports of training runs, sweeps and walk-forwards, "
        "grouped by config: the mean ± std of the key metrics over seeds and test folds",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_OR_SWEEP_OR_WF",
        help="a run's, sweep's or walk-forward's folder (or one holding several), or a report.json",
    )
    p.add_argument("--html", metavar="FILE", help="also write the table as an HTML page")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        reports = unique(r for path in args.paths for r in discover(path))
        groups = group_reports(reports)
        print(format_table(groups))
        if args.html:
            atomic_write_text(args.html, html_page(groups))
            print(f"HTML page: {args.html}")
        if args.json:
            atomic_write_text(args.json, json.dumps(compare_json(groups), indent=2) + "\n")
            print(f"JSON: {args.json}")
        return 0

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
