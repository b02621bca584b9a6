"""``python -m marl_jax.train``: train the Strategic MARL agents with MAPPO.

Training runs in jitted chunks of ``checkpoint.save_every`` updates; an Orbax checkpoint is
written between chunks, so ``--resume`` continues bit-identically from the latest one. At the
end the run directory holds ``config.yaml``, ``checkpoints/``, ``metrics.jsonl``,
``learning_curve.png``, ``report.json``, ``equity_curve.png`` and ``strategic_marl.pt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from marl_jax.checkpoint import TrainCheckpointer
from marl_jax.config import Config, ConfigError, config_to_dict, load_config, save_config
from marl_jax.env import data as bar_data
from marl_jax.env import evaluate, market
from marl_jax.env.data import DataError
from marl_jax.env.features import FeatureNorm
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.models.actors import AGENT_ORDER
from marl_jax.models.registry import module_config
from marl_jax.models.store import ModelStoreError, load_models

DEFAULT_CONFIG = "configs/strategic_marl_v1.yaml"
REPORT_METRICS = ("sharpe", "total_log_return", "max_drawdown", "hit_rate", "turnover")
AGENT_INPUT_DIMS = {"mlmi": 4, "nwrqk": 6, "mmd": 3}
PROGRESS_EVERY = 5  # updates per jitted chunk (a divisor of save_every, for exact resume)


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message is one line."""


# ----------------------------------------------------------------------------- files


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metrics_log(path: Path, up_to: int | None = None) -> list[dict]:
    """Records of ``metrics.jsonl`` (those with ``update <= up_to`` when given)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is unreliable
        if up_to is None or row.get("update", 0) <= up_to:
            rows.append(row)
    return rows


def plot_learning_curve(rows: Sequence[Mapping], path: Path) -> None:
    """PNG of the average reward per update (and its moving average) and the entropies."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    updates = np.array([r["update"] for r in rows])
    reward = np.array([r["average_reward"] for r in rows]) * 1e4
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(updates, reward, lw=0.8, alpha=0.5, label="per update")
    width = max(1, len(rows) // 10)
    if len(rows) >= width:
        smooth = np.convolve(reward, np.ones(width) / width, mode="valid")
        ax1.plot(updates[width - 1 :], smooth, lw=2, label=f"moving average ({width})")
    ax1.set_xlabel("update")
    ax1.set_ylabel("average reward per step (bp)")
    ax1.set_title("training reward")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="best")
    for name in AGENT_ORDER:
        ax2.plot(updates, [r[f"{name}/entropy"] for r in rows], label=name)
    ax2.set_xlabel("update")
    ax2.set_ylabel("policy entropy (nats)")
    ax2.set_title("entropy")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="best")
    fig.tight_layout()
    evaluate.save_png_atomic(fig, path)


# ----------------------------------------------------------------------------- setup


def load_market(cfg: Config) -> bar_data.Bars:
    """The configured bar file, or the embedded synthetic market."""
    if cfg.env.data_path:
        path = Path(cfg.env.data_path)
        if not path.is_file():
            raise TrainError(f"{path}: data file not found (set --data or env.data_path)")
        return bar_data.load_bars(path, interval_minutes=cfg.env.interval_minutes)
    return bar_data.synthetic_bars(
        cfg.env.synthetic_n_bars,
        seed=cfg.env.synthetic_seed,
        interval_minutes=cfg.env.interval_minutes,
    )


def env_params_for(
    cfg: Config, bars: bar_data.Bars, split: str, norm: FeatureNorm | None
) -> market.EnvParams:
    return market.make_env_params(
        bars,
        split,
        episode_len=cfg.env.episode_len,
        cost_bps=cfg.env.cost_bps,
        window=cfg.env.window,
        norm=norm,
        split_fractions=cfg.env.split_fractions,
    )


def load_init(path: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """Variables and model configs from a ``.pt`` checkpoint (via the bridge) or a model dir."""
    source = Path(path)
    if source.is_dir():
        try:
            bundle = load_models(source)
        except ModelStoreError as err:
            raise TrainError(str(err)) from None
        agents, critic, modules = bundle.agents, bundle.critic, bundle.modules
    else:
        try:
            from bridge.convert import BridgeError, load_pt_checkpoint
        except ImportError as err:
            raise TrainError(
                f"--init-from {path}: reading .pt files needs the bridge and torch ({err}); "
                "or convert first with `python -m bridge to-orbax FILE.pt DIR`"
            ) from None
        try:
            ckpt = load_pt_checkpoint(source)
        except BridgeError as err:
            raise TrainError(str(err)) from None
        agents, critic, modules = ckpt.agents, ckpt.critic, ckpt.modules
    missing = [name for name in (*AGENT_ORDER, "critic") if name not in modules]
    if missing:
        raise TrainError(f"--init-from {path}: the checkpoint has no {', '.join(missing)} model")
    variables = {name: jax.tree.map(np.asarray, agents[name]) for name in AGENT_ORDER}
    variables["critic"] = jax.tree.map(np.asarray, critic)
    return variables, {name: module_config(m) for name, m in modules.items()}


def config_with_models(cfg: Config, configs: Mapping[str, Mapping], source: str) -> Config:
    """``cfg`` with its model sections replaced by a checkpoint's inferred configurations."""
    from marl_jax.config import config_from_dict

    data = config_to_dict(cfg)
    for name in AGENT_ORDER:
        data["agents"][name] = dict(configs[name])
    data["critic"] = dict(configs["critic"])
    for name, dim in AGENT_INPUT_DIMS.items():
        if data["agents"][name]["input_dim"] != dim:
            raise TrainError(
                f"--init-from {source}: agent {name} takes {data['agents'][name]['input_dim']} "
                f"features, but the market serves {dim}"
            )
    return config_from_dict(data, source=source)


@dataclasses.dataclass
class Run:
    """Everything a run needs, resolved from the command line."""

    cfg: Config
    out: Path
    bars: bar_data.Bars
    norm: FeatureNorm
    train_params: market.EnvParams
    algo: MAPPO
    init: dict | None


def prepare(args: argparse.Namespace) -> Run:
    out = Path(args.out)
    config_path = out / "config.yaml"
    if args.resume:
        if not config_path.is_file():
            raise TrainError(f"--resume: {config_path} not found; start the run without --resume")
        if args.set or args.init_from:
            raise TrainError("--resume continues a run as configured: drop --set/--init-from")
        cfg = load_config(config_path)
    else:
        if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
            raise TrainError(
                f"{out} already holds a run; continue it with --resume or choose another --out"
            )
        overrides = list(args.set)
        if args.data:
            overrides.append(f"env.data_path={args.data}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.total_timesteps is not None:
            overrides.append(f"training.total_timesteps={args.total_timesteps}")
        if not Path(args.config).is_file():
            raise TrainError(f"{args.config}: config file not found")
        cfg = load_config(args.config, overrides)
    init = None
    if args.init_from:
        init, model_configs = load_init(args.init_from)
        cfg = config_with_models(cfg, model_configs, args.init_from)
    bars = load_market(cfg)
    train_params = env_params_for(cfg, bars, "train", None)
    norm = market.get_normalisation(train_params)
    return Run(cfg, out, bars, norm, train_params, MAPPO(cfg), init)


# ----------------------------------------------------------------------------- loop


def to_floats(metrics: Mapping[str, Any], index: int) -> dict[str, float]:
    return {k: float(np.asarray(v)[index]) for k, v in metrics.items()}


def train_loop(run: Run, resume: bool, progress: bool, tensorboard: bool) -> TrainState:
    cfg, algo, out = run.cfg, run.algo, run.out
    save_every = cfg.checkpoint.save_every
    chunk = math.gcd(save_every, PROGRESS_EVERY)
    total = algo.num_updates
    steps_per_update = cfg.training.num_envs * cfg.training.rollout_len
    ckpt_dir = out / "checkpoints"
    checkpointer = TrainCheckpointer(
        ckpt_dir,
        max_to_keep=cfg.checkpoint.max_to_keep,
        best_metric=cfg.checkpoint.best_metric,
        save_every=1,
    )
    init_fn = jax.jit(algo.init)
    rng = jax.random.key(cfg.seed)
    metrics_path = out / "metrics.jsonl"
    if resume and checkpointer.latest_step() is not None:
        target = jax.eval_shape(init_fn, rng, run.train_params, run.init)
        state, _, _, _ = checkpointer.restore(target=target)
        rows = read_metrics_log(metrics_path, up_to=int(state.update_step))
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        state = init_fn(rng, run.train_params, run.init)
        atomic_write_text(metrics_path, "")
    save_config(cfg, out / "config.yaml")

    run_chunk = jax.jit(algo.run, static_argnums=2)
    writer = _tensorboard_writer(out) if tensorboard else None
    bar = _progress(total, int(state.update_step), progress)
    config_dict = config_to_dict(cfg)
    last_good = checkpointer.latest_step()
    try:
        while int(state.update_step) < total:
            done = int(state.update_step)
            n = min(chunk - done % chunk, total - done)
            started = time.perf_counter()
            new_state, metrics = run_chunk(state, run.train_params, n)
            jax.block_until_ready(new_state)
            elapsed = time.perf_counter() - started
            rows = [{"update": done + i + 1, **to_floats(metrics, i)} for i in range(n)]
            bad = [k for k, v in rows[-1].items() if not math.isfinite(v)] or [
                k for r in rows for k, v in r.items() if not math.isfinite(v)
            ]
            if bad:
                where = (
                    f"the last good checkpoint is step {last_good} in {ckpt_dir / str(last_good)}"
                    if last_good is not None
                    else "no checkpoint was written yet"
                )
                raise TrainError(
                    f"non-finite {sorted(set(bad))[0]} in updates {done + 1}-{done + n}; "
                    f"stopped, {where}. Lower the learning rates or check the data"
                )
            state = new_state
            with metrics_path.open("a") as fh:
                for row in rows:
                    row["env_steps"] = row["update"] * steps_per_update
                    fh.write(json.dumps(row) + "\n")
            if writer is not None:
                for row in rows:
                    for key, value in row.items():
                        writer.add_scalar(key, value, row["update"])
            chunk_metrics = {
                k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "update"
            }
            step = int(state.update_step)
            if step % save_every == 0 or step == total:
                checkpointer.save(
                    step,
                    state,
                    config=config_dict,
                    norm=_norm_tree(run.norm),
                    metrics={**chunk_metrics, "update": step},
                    force=True,
                )
                checkpointer.wait_until_finished()
                last_good = step
            if bar is not None:
                bar.update(n)
                bar.set_postfix(
                    env_steps=f"{step * steps_per_update:,}",
                    sps=f"{n * steps_per_update / elapsed:,.0f}",
                    avg_reward=f"{chunk_metrics['average_reward'] * 1e4:+.2f}bp",
                )
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        checkpointer.close()
    return state


def _norm_tree(norm: FeatureNorm) -> dict:
    return {
        "center": np.asarray(norm.center, np.float64),
        "scale": np.asarray(norm.scale, np.float64),
        "clip": np.asarray(norm.clip, np.float64),
    }


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="update", dynamic_ncols=True)


def _tensorboard_writer(out: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise TrainError(
            "--tensorboard needs tensorboardX: pip install 'marl-jax[tensorboard]'"
        ) from None
    return SummaryWriter(str(out / "tensorboard"))


# ----------------------------------------------------------------------------- report


def greedy_policy(algo: MAPPO, state: TrainState):
    """A NumPy policy for the evaluator: greedy actions ``(N, 3)`` of the trained actors."""
    act = jax.jit(lambda obs: algo.act(state, obs)[0])
    return lambda obs: np.asarray(act(obs))


def write_report(run: Run, state: TrainState) -> dict:
    """Evaluates the greedy policy and the baselines on the test split; writes the report."""
    cfg, out = run.cfg, run.out
    test_params = env_params_for(cfg, run.bars, "test", run.norm)
    policy_metrics, baselines, _ = evaluate.evaluate_split(
        greedy_policy(run.algo, state),
        test_params,
        "test",
        plot_path=out / "equity_curve.png",
        title="test split: trained policy (greedy) vs baselines",
        seed=cfg.seed,
        batch_size=2048,
    )
    rows = read_metrics_log(out / "metrics.jsonl")
    report = {
        "split": "test",
        "policy": {k: policy_metrics[k] for k in REPORT_METRICS},
        "baselines": {name: {k: m[k] for k in REPORT_METRICS} for name, m in baselines.items()},
        "training": {
            "updates": int(state.update_step),
            "env_steps": int(state.update_step) * cfg.training.num_envs * cfg.training.rollout_len,
            "first_10pct_reward": _tail_mean(rows, first=True),
            "last_10pct_reward": _tail_mean(rows, first=False),
        },
        "normalisation": run.norm.to_dict(),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    if rows:
        plot_learning_curve(rows, out / "learning_curve.png")
    return report


def _tail_mean(rows: Sequence[Mapping], first: bool) -> float | None:
    if not rows:
        return None
    k = max(1, len(rows) // 10)
    part = rows[:k] if first else rows[-k:]
    return float(np.mean([r["average_reward"] for r in part]))


def format_report(report: Mapping) -> str:
    """The report as a text table."""
    header = f"{'test split':16s}" + "".join(f"{k:>18s}" for k in REPORT_METRICS)
    lines = [header, "-" * len(header)]
    entries = [("policy (greedy)", report["policy"]), *report["baselines"].items()]
    for name, metrics in entries:
        lines.append(f"{name:16s}" + "".join(f"{metrics[k]:>18.4f}" for k in REPORT_METRICS))
    return "\n".join(lines)


def export_pt(run: Run, state: TrainState) -> Path | None:
    """Writes ``strategic_marl.pt`` in the original format (needs torch through the bridge)."""
    try:
        from bridge.convert import new_checkpoint, save_pt_checkpoint
    except ImportError as err:
        print(f"warning: strategic_marl.pt not written: the bridge needs torch ({err})")
        return None
    variables = {name: run.algo.variables(state, name) for name in (*AGENT_ORDER, "critic")}
    variables = jax.tree.map(np.asarray, variables)
    ckpt = new_checkpoint(
        {name: variables[name] for name in AGENT_ORDER},
        variables["critic"],
        run.algo.modules,
        metadata={
            "trained_updates": int(state.update_step),
            "feature_normalisation": json.dumps(run.norm.to_dict()),
        },
    )
    path = run.out / "strategic_marl.pt"
    save_pt_checkpoint(ckpt, path)
    return path


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marl_jax.train", description="Train the Strategic MARL agents with MAPPO"
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config file")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.add_argument("--data", help="CSV/Parquet bar file (default: synthetic bars)")
    p.add_argument("--out", default="runs/latest", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", help="start from a .pt checkpoint or a bridge model directory")
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--total-timesteps", type=int, help="environment steps to train for")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true", help="also log to DIR/tensorboard")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = prepare(args)
        state = train_loop(run, args.resume, not args.no_progress, args.tensorboard)
        report = write_report(run, state)
        print(format_report(report))
        exported = export_pt(run, state)
        print(f"run directory: {run.out}" + (f" (exported {exported.name})" if exported else ""))
        return 0
    except (TrainError, ConfigError, DataError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
