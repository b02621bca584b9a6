"""What a walk-forward's choice of checkpoint costs or earns (issue 31, item 3).

Each fold of a walk-forward keeps its checkpoints (``checkpoint.save_every``) and runs only the
one it chose on validation over its test fold. This script takes finished single-file
walk-forwards and runs every kept checkpoint of every fold over that fold's test bars, then
pools the folds as the report does. The rows are the selection rules: ``validation`` (the
walk-forward's own choice; it reproduces the report's figure) and ``update N`` (always the
checkpoint after ``N`` updates). The ``best on test`` row is hindsight, not a rule: it bounds
what any choice among the kept checkpoints could earn.

Use it on development files. On a benchmark file every row but ``validation`` is a second read
of test folds that were meant to be read once, and may only be reported as such.

    python benchmarks/selection.py runs/wf_seed0 runs/wf_seed1 runs/wf_seed2

Per row: the pooled net active IR against buy-and-hold (mean and values over the
walk-forwards), the capture (over the oracle's, where the file was planted) and the test folds
that hold one position. Time on the 2-core development machine: about 15 s a walk-forward of
five folds with four checkpoints each, compilation included (43 s for three, 2026-12-07).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

VALIDATION, HINDSIGHT = "validation", "best on test (hindsight)"


def rescore(out: Path) -> dict[str, dict]:
    """``{rule: {"active_ir", "oracle_ir", "one_sign", "folds"}}`` of the finished walk-forward
    in ``out`` (one data file; one-sign as the report counts it, flat a sign)."""
    import jax

    from marl_jax.config import config_from_dict
    from marl_jax.env import evaluate, market
    from marl_jax.mappo import MAPPO
    from marl_jax.run.checkpointer import TrainCheckpointer
    from marl_jax.run.provenance import bar_calendar
    from marl_jax.run.report import holds_one_sign
    from marl_jax.run.setup import load_markets, load_oracles
    from marl_jax.run.steps import restore_state
    from marl_jax.walkforward.driver import MANIFEST, fold_dir
    from marl_jax.walkforward.fold_run import EVAL_BATCH, fold_envs, greedy_policy_of, load_fold
    from marl_jax.walkforward.folds import Fold
    from marl_jax.walkforward.pooled import pooled_metrics

    manifest = json.loads((out / MANIFEST).read_text())
    cfg = config_from_dict(manifest["config"], source=str(out / MANIFEST))
    if cfg.ensemble > 1:
        raise SystemExit(
            f"{out}: an ensemble walk-forward (ensemble {cfg.ensemble}); each fold's members "
            "choose their checkpoints apart: rescore a walk-forward with ensemble=1"
        )
    markets = load_markets(cfg)
    if len(markets) != 1:
        raise SystemExit(f"{out}: a walk-forward over several files; give single-file ones")
    bars = next(iter(markets.values()))
    oracle = next(iter(load_oracles(cfg, markets).values()))
    algo = MAPPO(cfg, market.MARKET)
    policy_of = greedy_policy_of(algo)
    ppy = bar_calendar(cfg, bars).periods_per_year
    per_rule: dict[str, list] = {VALIDATION: [], HINDSIGHT: []}
    for layout in manifest["folds"]:
        fold = Fold(layout["fold"], *(tuple(layout[k]) for k in ("train", "val", "test")))
        root = fold_dir(out, fold.index)
        done = load_fold(root)
        if done is None:
            raise SystemExit(f"{root}: fold not finished; finish the walk-forward first")
        summary, recorded = done
        envs = fold_envs(cfg, bars, fold, oracle)
        target = algo.init(jax.random.key(cfg.seed), envs.train)
        k = cfg.checkpoint
        ckpt = TrainCheckpointer(
            root / k.dir, max_to_keep=k.max_to_keep, best_metric=k.best_metric, read_only=True
        )
        tested = {}  # the baselines are the checkpoints' own: only the policy is run again
        try:
            for step in ckpt.all_steps():
                state, _ = restore_state(ckpt, algo, target, step)
                run = evaluate.run_policy(policy_of(state), envs.test, batch_size=EVAL_BATCH)
                policy = {"positions": run.positions, "rewards": run.rewards, "pnl": run.pnl}
                tested[step] = {**recorded, "policy": policy}
        finally:
            ckpt.close()
        chosen = summary["selection"].get("step")
        mine = tested[chosen]["policy"]["positions"] if chosen in tested else None
        if mine is None or not np.allclose(mine, recorded["policy"]["positions"]):
            raise SystemExit(f"{root}: the chosen checkpoint does not reproduce its test fold")
        per_rule[VALIDATION].append((summary, recorded))
        for step, arrays in tested.items():
            per_rule.setdefault(f"update {step}", []).append((summary, arrays))
        best = max(tested, key=lambda s: _fold_ir(tested[s], ppy, cfg.env.cost_bps))
        per_rule[HINDSIGHT].append((summary, tested[best]))
    result = {}
    for rule, folds in per_rule.items():
        pooled = pooled_metrics(folds, ppy, cfg.env.cost_bps)
        result[rule] = {
            "active_ir": float(pooled["policy"]["active_ir"]),
            "oracle_ir": float(pooled["oracle"]["active_ir"]) if "oracle" in pooled else None,
            "one_sign": sum(holds_one_sign(a["policy"]["positions"]) for _, a in folds),
            "folds": len(folds),
        }
    return result


def _fold_ir(arrays: dict, periods_per_year: float, cost_bps: float) -> float:
    from marl_jax.walkforward.pooled import pooled_metrics

    return float(
        pooled_metrics([(None, arrays)], periods_per_year, cost_bps)["policy"]["active_ir"]
    )


def _rules(results: Sequence[dict]) -> list[str]:
    steps = sorted(
        {r for res in results for r in res if r.startswith("update ")},
        key=lambda r: int(r.split()[1]),
    )
    return [VALIDATION, *steps, HINDSIGHT]


def table(results: Sequence[dict]) -> str:
    """A Markdown table: per rule, the mean and values of the pooled net active IR and of the
    capture over the walk-forwards, and their one-sign test folds."""
    lines = [
        "| rule | net active IR: mean (each) | capture: mean (each) | one-sign test folds |",
        "|---|---|---|---|",
    ]
    for rule in _rules(results):
        rows = [res[rule] for res in results if rule in res]
        irs = [r["active_ir"] for r in rows]
        caps = [
            r["active_ir"] / r["oracle_ir"] if r["oracle_ir"] and r["oracle_ir"] > 0 else None
            for r in rows
        ]
        cap = (
            f"{np.mean(caps):.2f} ({', '.join(f'{c:.2f}' for c in caps)})"
            if all(c is not None for c in caps)
            else "-"
        )
        signs = ", ".join(f"{r['one_sign']}/{r['folds']}" for r in rows)
        each = ", ".join(f"{x:+.2f}" for x in irs)
        lines.append(f"| {rule} | {np.mean(irs):+.2f} ({each}) | {cap} | {signs} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from marl_jax.errors import cli_main

    return cli_main(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("walkforwards", nargs="+", help="finished walk-forward output folders")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    results = []
    for out in args.walkforwards:
        path = Path(out)
        if not path.is_dir():
            print(f"error: {out}: not a folder; give walk-forward output folders", file=sys.stderr)
            return 2
        results.append(rescore(path))
        print(f"{out}: rescored", flush=True)
    print(table(results), end="")
    if args.json:
        from marl_jax.files import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
