"""A directory of Strategic MARL models in Orbax format, readable without PyTorch.

Layout of ``DIR``: ``variables/`` (an Orbax PyTree checkpoint of ``{'agents': {name: vars},
'critic': vars}``) and ``models.json`` (each model's constructor arguments and the metadata).
This is what ``python -m bridge to-orbax`` writes and what ``--init-from DIR`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from marl_jax.models.registry import abstract_variables, build_module, module_config

MODELS_JSON = "models.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1


class ModelStoreError(ValueError):
    """A model directory that cannot be read; the message is one line."""


@dataclasses.dataclass
class ModelBundle:
    """Flax variables and ready modules of the three actors and the critic."""

    agents: dict[str, dict]
    critic: dict
    modules: dict[str, nn.Module]
    metadata: dict


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def save_models(
    directory: str | os.PathLike,
    agents: Mapping[str, Mapping],
    critic: Mapping,
    modules: Mapping[str, nn.Module],
    metadata: Mapping | None = None,
    sidecars: Mapping[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Writes the models to ``directory`` atomically (a temporary directory, then rename).

    ``sidecars`` maps a file name to a writer called with its path inside the new directory.
    An existing ``directory`` is replaced only once the new one is complete.
    """
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    tmp.chmod(0o755)
    try:
        tree = {
            "agents": {name: jax.tree.map(np.asarray, v) for name, v in agents.items()},
            "critic": jax.tree.map(np.asarray, critic),
        }
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / VARIABLES_DIR, tree)
        checkpointer.wait_until_finished()
        info = {
            "format_version": FORMAT_VERSION,
            "agents": list(agents),
            "configs": {name: module_config(m) for name, m in modules.items()},
            "metadata": _json_safe(dict(metadata or {})),
        }
        (tmp / MODELS_JSON).write_text(json.dumps(info, indent=2) + "\n")
        for name, writer in (sidecars or {}).items():
            writer(tmp / name)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / directory.name)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def load_models(directory: str | os.PathLike) -> ModelBundle:
    """Reads a directory written by :func:`save_models`."""
    directory = Path(directory).absolute()
    info_path = directory / MODELS_JSON
    if not info_path.is_file() or not (directory / VARIABLES_DIR).is_dir():
        raise ModelStoreError(
            f"{directory}: not a marl-jax model directory (expected {MODELS_JSON} and "
            f"{VARIABLES_DIR}/); create one with `python -m bridge to-orbax FILE.pt DIR`"
        )
    try:
        info = json.loads(info_path.read_text())
        modules = {name: build_module(name, cfg) for name, cfg in info["configs"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ModelStoreError(f"{info_path}: unreadable model description ({err})") from None
    target = {
        "agents": {name: abstract_variables(modules[name]) for name in info["agents"]},
        "critic": abstract_variables(modules["critic"]),
    }
    try:
        tree = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR, target)
    except Exception as err:  # Orbax raises many types for damaged checkpoints
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelStoreError(f"{directory / VARIABLES_DIR}: cannot restore ({first})") from None
    return ModelBundle(
        agents=dict(tree["agents"]),
        critic=tree["critic"],
        modules=modules,
        metadata=info.get("metadata", {}),
    )
