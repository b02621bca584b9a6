"""The run layer: one atomic writer, the run lock, sources every reader accepts, norm_clip."""

from __future__ import annotations

import math
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from tiny_config import TINY, tiny

from marl_jax.config import config_from_dict
from marl_jax.env import data, market
from marl_jax.files import atomic_write_bytes, atomic_write_text
from marl_jax.run.metrics_log import metrics_lines, tenth_mean, trim_metrics_log
from marl_jax.run.plots import smoothed_reward
from marl_jax.run.rundir import RunError, RunLock
from marl_jax.run.session import train_run
from marl_jax.run.setup import RunSpec, env_params_for, load_init
from marl_jax.run.sources import SourceError, load_models_from, resolve_source


def same_leaves(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(la, lb, strict=True)
    )


# ----------------------------------------------------------------------------- files


def test_atomic_write_gives_the_umask_mode_and_leaves_no_temp_file(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.json", "{}\n")
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(path.parent) == ["a.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = atomic_write_bytes(tmp_path / "a.bin", b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


# ----------------------------------------------------------------------------- lock


def test_the_run_lock_names_its_owner_and_is_released(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run"):  # free again once released
        pass


# ----------------------------------------------------------------------------- env.norm_clip


def test_norm_clip_bounds_the_normalised_features():
    cfg = config_from_dict(tiny(env={"norm_clip": 0.25}))
    bars = data.synthetic_bars(cfg.env.synthetic_n_bars, seed=0)
    params = env_params_for(cfg, bars, "train", None)
    assert market.get_normalisation(params).clip == 0.25
    assert float(np.abs(np.asarray(params.features)).max()) == pytest.approx(0.25)
    wide = env_params_for(config_from_dict(TINY), bars, "train", None)
    assert float(np.abs(np.asarray(wide.features)).max()) > 0.25


# ----------------------------------------------------------------------------- sources


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run of 2 updates with one checkpoint (step 2), trained by the CLI."""
    root = tmp_path_factory.mktemp("sources")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = root / "run"
    train_run(RunSpec(out=str(out), config=str(config)), progress=False)
    return out


@pytest.mark.slow
def test_every_reader_accepts_every_format_and_gets_the_same_weights(trained_run, tmp_path):
    bridge_main = pytest.importorskip("bridge.__main__").main
    pt = tmp_path / "from_run.pt"
    assert bridge_main(["to-pt", str(trained_run), str(pt)]) == 0
    step_dir = trained_run / "checkpoints" / "2"
    specs = {
        "run": str(trained_run),
        "run:latest": f"{trained_run}:latest",
        "run:2": f"{trained_run}:2",
        "step": str(step_dir),
        "exported .pt": str(trained_run / "strategic_marl.pt"),
        "bridge to-pt of the run": str(pt),
    }
    kinds = {name: resolve_source(spec).kind for name, spec in specs.items()}
    assert kinds["run"] == "run" and kinds["step"] == "checkpoint_step"
    assert kinds["exported .pt"] == kinds["bridge to-pt of the run"] == "pt"
    loaded = {name: load_init(spec)[0] for name, spec in specs.items()}
    for name, variables in loaded.items():
        assert same_leaves(variables, loaded["run"]), name
    with pytest.raises(SourceError, match="no checkpoint step 1"):
        load_init(f"{trained_run}:1")


@pytest.mark.slow
def test_init_from_a_run_and_from_its_step_train_alike(trained_run, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    finals = []
    for name, spec in (("a", str(trained_run)), ("b", str(trained_run / "checkpoints" / "2"))):
        out = tmp_path / name
        train_run(RunSpec(out=str(out), config=str(config), init_from=spec), progress=False)
        finals.append(load_models_from(str(out))[1])
    assert same_leaves(finals[0].agents, finals[1].agents)
    assert same_leaves(finals[0].critic, finals[1].critic)
    # Training moved away from the starting weights.
    start = load_models_from(str(trained_run))[1]
    assert not same_leaves(finals[0].agents["mlmi"], start.agents["mlmi"])


def test_a_folder_of_another_kind_is_a_one_line_error(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(SourceError, match="not a run directory"):
        resolve_source(str(tmp_path / "something"))


# ----------------------------------------------------------------------------- compilation cache


def test_the_compilation_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from marl_jax.run.cache import cache_dir

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("MARL_JAX_NO_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "marl-jax" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "marl-jax" / "xla"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert cache_dir() == tmp_path / "jax"
    monkeypatch.setenv("MARL_JAX_NO_COMPILATION_CACHE", "1")
    assert cache_dir() is None
    monkeypatch.setenv("MARL_JAX_NO_COMPILATION_CACHE", "0")
    assert cache_dir() == tmp_path / "jax"


def test_the_tenth_mean_the_smoothing_and_the_metrics_log_trim(tmp_path):
    """The pieces runs and sweeps share: tenth means, the smoothed curve, the resume trim."""
    assert tenth_mean([float(v) for v in range(20)]) == 18.5
    assert tenth_mean([float(v) for v in range(20)], first=True) == 0.5
    assert tenth_mean([3.0]) == 3.0 and math.isnan(tenth_mean([]))
    updates, smooth = smoothed_reward(
        [{"update": i + 1, "average_reward": 1e-4 * i} for i in range(20)]
    )
    np.testing.assert_array_equal(updates, np.arange(2, 21))
    np.testing.assert_allclose(smooth, np.arange(19) + 0.5)
    path = tmp_path / "metrics.jsonl"
    path.write_text(metrics_lines([{"update": u} for u in (1, 2, 3)]) + '{"update": 4, "lo')
    assert trim_metrics_log(path, lambda r: True, write=None) == [{"update": u} for u in (1, 2, 3)]
    assert path.read_text().endswith('"lo')  # write=None only reads
    rows = trim_metrics_log(path, lambda r: r["update"] <= 2)
    assert rows == [{"update": 1}, {"update": 2}]
    assert path.read_text() == metrics_lines(rows)
