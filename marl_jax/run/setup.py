"""Resolving a run: its config, market, starting models and run directory (owned by a lock)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from marl_jax.agents import AGENT_NAMES, MODEL_NAMES
from marl_jax.config import Config, config_from_dict, config_to_dict, load_config
from marl_jax.env import data as bar_data
from marl_jax.env import market
from marl_jax.env.features import FeatureNorm
from marl_jax.mappo import MAPPO
from marl_jax.models.registry import configurable_kwargs, module_config, observes_position
from marl_jax.run.planted import read_oracle
from marl_jax.run.rundir import RunDir, RunError, RunLock
from marl_jax.run.sources import load_models_from

__all__ = [
    "SYNTHETIC",
    "Instrument",
    "Run",
    "RunSpec",
    "data_label",
    "env_params_for",
    "instruments_env_params",
    "load_init",
    "load_market",
    "load_markets",
    "load_oracles",
    "periods_per_year_for",
    "prepare",
    "resolve_config",
]

# The instrument name of the embedded synthetic market (a bar file's is its file name).
SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a user asks for (the train CLI's flags)."""

    out: str
    config: str = "quickstart"
    overrides: Sequence[str] = ()
    data: str | Sequence[str] | None = None  # one file, or several (instruments)
    resume: bool = False
    init_from: str | None = None
    seed: int | None = None
    total_timesteps: int | None = None


@dataclasses.dataclass(frozen=True)
class Instrument:
    """One instrument of a multi-instrument run: its bars, the normalisation fitted on its own
    train split, its train split's environment, and its planted signal (the sidecar's ``s``,
    see :mod:`marl_jax.run.planted`) where it has one."""

    bars: bar_data.Bars
    norm: FeatureNorm
    train_params: market.EnvParams
    oracle: np.ndarray | None = None

    @property
    def interval_minutes(self) -> float:
        """The bars' interval in minutes (their median spacing)."""
        return float(self.train_params.interval_minutes)

    @property
    def periods_per_year(self) -> float:
        """Bars per year that annualise this instrument's metrics (:func:`periods_per_year_for`)."""
        return float(self.train_params.periods_per_year)


@dataclasses.dataclass
class Run:
    """A resolved run: config, directory (locked), market, algorithm and starting models.

    With several instruments (``env.data_paths``), ``instruments`` holds each by name,
    ``train_params`` is the one environment over all of them, and ``bars`` and ``norm`` are
    the first instrument's. ``oracle``: the planted signal of ``bars`` where its file has a
    plant's sidecar (:func:`load_oracles`)."""

    cfg: Config
    dir: RunDir
    lock: RunLock
    bars: bar_data.Bars
    norm: FeatureNorm
    train_params: market.EnvParams
    algo: MAPPO
    init: dict | None
    instruments: dict[str, Instrument] | None = None
    oracle: np.ndarray | None = None

    @property
    def out(self) -> Path:
        return self.dir.root

    @property
    def interval_minutes(self) -> float:
        """The bars' interval in minutes (their median spacing; the first instrument's)."""
        return float(self.train_params.interval_minutes)

    @property
    def periods_per_year(self) -> float:
        """Bars per year that annualise the run's metrics (:func:`periods_per_year_for`; the
        first instrument's: each instrument's own is on ``instruments``)."""
        return float(self.train_params.periods_per_year)

    @property
    def norms(self) -> FeatureNorm | dict[str, FeatureNorm]:
        """What the run saves with its models: the normalisation, or one per instrument."""
        if self.instruments is None:
            return self.norm
        return {name: inst.norm for name, inst in self.instruments.items()}


def data_label(cfg: Config) -> str:
    """The configured data in words: its file(s), or the synthetic market."""
    e = cfg.env
    if e.data_paths:
        return ", ".join(e.data_paths)
    return e.data_path or f"the synthetic market ({e.synthetic_n_bars} bars)"


def load_markets(
    cfg: Config, say: Callable[[str], None] | None = print
) -> dict[str, bar_data.Bars]:
    """Every configured instrument by name: ``env.data_paths`` (by file name), else
    ``env.data_path``, else the embedded synthetic market (:data:`SYNTHETIC`, its bars
    ``env.interval_minutes`` apart). A file keeps its own interval unless
    ``env.resample_minutes`` is set; ``say`` gets one line per file that was resampled."""
    paths = list(cfg.env.data_paths) or ([cfg.env.data_path] if cfg.env.data_path else [])
    resample = cfg.env.resample_minutes
    if not paths:
        synthetic = bar_data.synthetic_bars(
            cfg.env.synthetic_n_bars,
            seed=cfg.env.synthetic_seed,
            interval_minutes=cfg.env.interval_minutes,
        )
        return {SYNTHETIC: synthetic}
    markets = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise RunError(
                f"{path}: data file not found (set --data, env.data_path or env.data_paths)"
            )
        markets[path.name] = bar_data.load_bars(path, resample_minutes=resample, say=say)
    return markets


def periods_per_year_for(
    cfg: Config, bars: bar_data.Bars, *, synthetic: bool | None = None
) -> float:
    """Bars per year that annualise a run's metrics on ``bars``: ``env.periods_per_year`` when
    set; for the synthetic market, the nominal calendar of ``env.interval_minutes`` (252 days of
    24 hours); else measured on the timestamps of the bars' train split
    (:func:`marl_jax.env.market.bars_per_year`). ``synthetic`` by default: the config names no
    bar file and the bars run round the clock at ``env.interval_minutes``, as
    :func:`marl_jax.env.data.synthetic_bars` makes them (real bars handed to a config without a
    file, as the benchmarks do, are measured)."""
    env = cfg.env
    if env.periods_per_year is not None:
        return float(env.periods_per_year)
    measured = market.bars_per_year(bars, env.split_fractions)
    if synthetic is None:
        round_the_clock = 365.25 * 24 * 60 / env.interval_minutes
        synthetic = not (env.data_path or env.data_paths) and (
            abs(measured / round_the_clock - 1) < 0.01
        )
    if synthetic:
        return market.periods_per_year_at(env.interval_minutes)
    return measured


def load_oracles(cfg: Config, markets: Mapping[str, bar_data.Bars]) -> dict[str, np.ndarray | None]:
    """Each instrument's planted signal by name, from its bar file's sidecar
    (:func:`marl_jax.run.planted.read_oracle`; None without one or for the synthetic market)."""
    paths = list(cfg.env.data_paths) or ([cfg.env.data_path] if cfg.env.data_path else [])
    by_name = {Path(p).name: p for p in paths}
    return {
        name: read_oracle(by_name[name], bars) if name in by_name else None
        for name, bars in markets.items()
    }


def load_market(cfg: Config) -> bar_data.Bars:
    """The configured bar file, or the embedded synthetic market; one instrument only."""
    markets = load_markets(cfg)
    if len(markets) > 1:
        raise RunError(
            f"env.data_paths: {len(markets)} instruments, but this command takes one; set "
            "env.data_path (or give --data once)"
        )
    return next(iter(markets.values()))


def _env_kwargs(cfg: Config, **given: Any) -> dict[str, Any]:
    """:func:`marl_jax.env.market.make_env_params`'s keywords from the config, with those of
    ``given`` that are not None overriding (``window``, ``cost_bps``, ``split_fractions``)."""
    env = cfg.env
    kwargs = {
        "episode_len": env.episode_len,
        "cost_bps": env.cost_bps,
        "window": env.window,
        "split_fractions": env.split_fractions,
        "norm_clip": env.norm_clip,
        **market.env_modes(cfg),
    }
    return {**kwargs, **{k: v for k, v in given.items() if v is not None}}


def env_params_for(
    cfg: Config,
    bars: bar_data.Bars,
    split: str,
    norm: FeatureNorm | None,
    *,
    bounds: tuple[int, int] | None = None,
    features: np.ndarray | None = None,
    return_stats: tuple[float, float] | None = None,
    window: int | None = None,
    cost_bps: float | None = None,
    split_fractions: Sequence[float] | None = None,
    periods_per_year: float | None = None,
    where: str | None = None,
    error: Callable[[str], Exception] = RunError,
) -> market.EnvParams:
    """The environment of one split as the config builds it: the one place every run,
    report, sweep, walk-forward fold and backtest builds one. ``norm=None`` fits it on the
    training split.

    The keywords go to :func:`marl_jax.env.market.make_env_params`: ``bounds`` (a bar range
    instead of ``split``; ``norm=None`` fits on it), ``features`` (precomputed raw features),
    ``return_stats``, and ``window``, ``cost_bps``, ``split_fractions`` overriding the
    config's. ``periods_per_year`` defaults to :func:`periods_per_year_for` (measured on the
    config's train split, so every split and fold of one file shares it). A bad split
    raises ``error("WHERE: ...")``, ``where`` defaulting to the config's data.
    """
    kwargs = _env_kwargs(cfg, cost_bps=cost_bps, window=window, split_fractions=split_fractions)
    if periods_per_year is None:
        periods_per_year = periods_per_year_for(cfg, bars)
    try:
        return market.make_env_params(
            bars,
            split,
            norm=norm,
            features=features,
            return_stats=return_stats,
            bounds=bounds,
            periods_per_year=periods_per_year,
            **kwargs,
        )
    except ValueError as err:
        raise error(f"{where or data_label(cfg)}: {err}") from None


def instruments_env_params(
    cfg: Config,
    markets: Mapping[str, bar_data.Bars],
    split: str,
    norms: Mapping[str, FeatureNorm] | None,
    *,
    error: Callable[[str], Exception] = RunError,
) -> tuple[market.EnvParams, dict[str, market.EnvParams]]:
    """One environment over several instruments (each environment draws one at reset) and
    each instrument's own: ``norms=None`` fits each on its own training split, as are the
    reward's return statistics. Errors name the instrument."""
    parts = {
        name: env_params_for(
            cfg, bars, split, None if norms is None else norms[name], where=name, error=error
        )
        for name, bars in markets.items()
    }
    return market.combine_instruments(list(parts.values())), parts


def load_init(spec: str) -> tuple[dict[str, dict], dict[str, dict], str]:
    """Variables, model configs and a description of any model source (see ``sources``)."""
    source, bundle = load_models_from(spec)
    missing = [name for name in MODEL_NAMES if name not in bundle.modules]
    if missing:
        raise RunError(f"--init-from {spec}: the checkpoint has no {', '.join(missing)} model")
    variables = {name: jax.tree.map(np.asarray, bundle.agents[name]) for name in AGENT_NAMES}
    variables["critic"] = jax.tree.map(np.asarray, bundle.critic)
    configs = {name: module_config(m) for name, m in bundle.modules.items()}
    return variables, configs, source.description


def config_with_models(cfg: Config, configs: Mapping[str, Mapping], source: str) -> Config:
    """``cfg`` with its model sections replaced by a checkpoint's configurations, and its
    ``env.observe_position`` by whether they take the position input."""
    data = config_to_dict(cfg)
    try:
        held = observes_position(configs)  # the models' inputs set env.observe_position
        data["env"]["observe_position"] = held
        for name in AGENT_NAMES:
            data["agents"][name] = configurable_kwargs(name, configs[name], held)
        data["critic"] = configurable_kwargs("critic", configs["critic"], held)
    except ValueError as err:
        raise RunError(f"--init-from {source}: {err}; it cannot run in this market") from None
    return config_from_dict(data, source=source)


def data_overrides(data: str | Sequence[str] | None) -> list[str]:
    """The overrides of ``--data``: one file sets ``env.data_path``, several
    ``env.data_paths`` (either clears the other)."""
    paths = [data] if isinstance(data, str) else list(data or ())
    if not paths:
        return []
    if len(paths) == 1:
        return [f"env.data_path={json.dumps(paths[0])}", "env.data_paths=[]"]
    return ["env.data_path=null", f"env.data_paths={json.dumps(paths)}"]


def resolve_config(spec: RunSpec) -> Config:
    """The config the run ``spec`` asks for: the one recorded in ``spec.out`` under
    ``spec.resume``, else ``spec.config`` with its overrides; one-line errors."""
    return _resolve_config(spec, RunDir(Path(spec.out)))


def _resolve_config(spec: RunSpec, run_dir: RunDir) -> Config:
    if spec.resume:
        if not run_dir.config.is_file():
            raise RunError(f"--resume: {run_dir.config} not found; start the run without --resume")
        if spec.overrides or spec.init_from or spec.data or spec.seed is not None:
            raise RunError(
                "--resume continues a run as configured: drop --set/--init-from/--data/--seed "
                "(only --total-timesteps may raise the run's length)"
            )
        cfg = load_config(run_dir.config)
        if spec.total_timesteps is not None:
            now = cfg.training.total_timesteps
            if spec.total_timesteps < now:
                raise RunError(
                    f"--total-timesteps {spec.total_timesteps}: the run is configured for {now}; "
                    "a resumed run can only be made longer"
                )
            data = config_to_dict(cfg)
            data["training"]["total_timesteps"] = spec.total_timesteps
            cfg = config_from_dict(data, source=f"{run_dir.config} (--total-timesteps)")
        return cfg
    overrides = [*spec.overrides, *data_overrides(spec.data)]
    if spec.seed is not None:
        overrides.append(f"seed={spec.seed}")
    if spec.total_timesteps is not None:
        overrides.append(f"training.total_timesteps={spec.total_timesteps}")
    return load_config(spec.config, overrides)


def prepare(spec: RunSpec) -> Run:
    """Resolves everything the run needs and locks its directory; one-line errors.

    Nothing is written before the config is valid; a run directory that this call created is
    removed again when setting up fails.
    """
    root = Path(spec.out)
    if root.exists() and not root.is_dir():
        raise RunError(f"--out {root}: exists and is not a folder; choose another --out")
    cfg = _resolve_config(spec, RunDir(root))
    if cfg.ensemble > 1:
        raise RunError(
            f"ensemble {cfg.ensemble}: one run trains one model; train the ensemble with "
            "`python -m marl_jax.train` (marl_jax.run.ensemble.train_ensemble)"
        )
    created = not root.exists()
    lock = RunLock(root).acquire()
    try:
        # Checked under the lock, in the configured and in the default checkpoint folder.
        run_dir = RunDir(root, cfg.checkpoint.dir)
        if not spec.resume and (run_dir.holds_a_run() or RunDir(root).holds_a_run()):
            raise RunError(
                f"{root} already holds a run; continue it with --resume or choose another --out"
            )
        init = None
        if spec.init_from:
            init, model_configs, described = load_init(spec.init_from)
            cfg = config_with_models(cfg, model_configs, spec.init_from)
            print(f"init from {described}")
        markets = load_markets(cfg)
        oracles = load_oracles(cfg, markets)
        if len(markets) == 1:
            bars = next(iter(markets.values()))
            train_params = env_params_for(cfg, bars, "train", None)
            norm = market.get_normalisation(train_params)
            algo = MAPPO(cfg, market.MARKET)
            oracle = next(iter(oracles.values()))
            return Run(cfg, run_dir, lock, bars, norm, train_params, algo, init, oracle=oracle)
        train_params, parts = instruments_env_params(cfg, markets, "train", None)
        instruments = {
            name: Instrument(markets[name], market.get_normalisation(part), part, oracles[name])
            for name, part in parts.items()
        }
        first = next(iter(instruments.values()))
        algo = MAPPO(cfg, market.MARKET)
        return Run(
            cfg, run_dir, lock, first.bars, first.norm, train_params, algo, init, instruments
        )
    except BaseException:
        lock.release()
        if created:
            lock.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
