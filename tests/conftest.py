"""Shared pytest fixtures.

The shared reference material (spec, fixtures) lives beside the checkout, in
``<checkout>/../shared``. Tests that need it take one of the fixtures below, which skip the test
with a clear reason when the material is absent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
from xla_levels import with_fast_compile

# Exact float32 matmuls everywhere (the tolerances assume them); set before any test runs.
# The environment variable carries it to the command lines the tests start, so that their
# programs are the ones compiled in this process (the precision is part of each program).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
jax.config.update("jax_default_matmul_precision", "highest")

# XLA's lowest backend optimisation level for every test and for the command lines the tests
# start (the environment carries it): compiling dominates the suite (xla_levels.py). It must be
# set before JAX starts its CPU backend, which importing jax does not do.
os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS", ""))

# One persistent compilation cache for the session, shared with the subprocesses the CLI tests
# start (they compile the same tiny training programs): compile time dominates those tests.
_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="marl-jax-test-xla-cache-")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# The files that take minutes, longest first; pyproject.toml turns off pytest-xdist's reordering
# (by number of tests, which put the 2-test learning file, 8 minutes alone, near the end of the
# queue, so that one worker ran it while the other had run out of files). The rest keep their
# order. Only the order changes: each file still runs whole on one worker.
LONGEST_FIRST = (
    "test_sweep.py",
    "test_train_cli.py",
    "test_mappo.py",
    "test_walkforward_sweep.py",
    "test_learning.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file and among the rest is kept


SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE_CKPT_NAME = "strategic_marl_reference.pt"
REFERENCE_IO_NAME = "reference_io.npz"
STATE_DICT_LAYOUT_RELPATH = Path("spec") / "state_dict_layout.txt"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (shared reference material is absent)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared directory (``<checkout>/../shared``); skips if it does not exist."""
    return _require(SHARED_DIR, "shared directory")


@pytest.fixture(scope="session")
def state_dict_layout_path(shared_dir: Path) -> Path:
    """Path of ``spec/state_dict_layout.txt``; skips if absent."""
    return _require(shared_dir / STATE_DICT_LAYOUT_RELPATH, "state-dict layout file")


@pytest.fixture(scope="session")
def reference_ckpt_path(shared_dir: Path) -> Path:
    """Path of the upstream PyTorch reference checkpoint; skips if absent."""
    return _require(
        shared_dir / "fixtures" / "upstream_reference" / REFERENCE_CKPT_NAME,
        "upstream reference checkpoint",
    )


@pytest.fixture(scope="session")
def reference_io(shared_dir: Path) -> dict[str, np.ndarray]:
    """The upstream reference inputs/outputs as a plain dict of arrays; skips if absent.

    Keys: ``<agent>/input``, ``<agent>/{action_probs, logits, value, action, log_prob, entropy,
    attention_weights}`` for agent in mlmi, nwrqk, mmd; ``critic/input``, ``critic/value``,
    ``critic/agent_values/<agent>``. Treat the arrays as read-only (the fixture is session-wide).
    """
    path = _require(
        shared_dir / "fixtures" / "upstream_reference" / REFERENCE_IO_NAME,
        "upstream reference outputs",
    )
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


@pytest.fixture(scope="session")
def fresh_variables():
    """``fresh_variables(module, seed=0)``: ``init_variables(module, jax.random.key(seed))``.

    Compiling the random initialisers is slow on CPU (seconds per model), so each module is
    compiled once and each (module, seed) computed once per session. Treat the result as
    read-only.
    """
    from marl_jax.models.registry import init_variables

    init = jax.jit(init_variables, static_argnums=0)
    cache: dict = {}

    def get(module, seed: int = 0) -> dict:
        if (module, seed) not in cache:
            cache[(module, seed)] = init(module, jax.random.key(seed))
        return cache[(module, seed)]

    return get
