"""A directory of Strategic MARL models in Orbax format, readable without PyTorch.

A model directory is an Orbax composite checkpoint with two items: ``variables/`` (the PyTree
``{'agents': {name: variables}, 'critic': variables}``) and ``models/`` (JSON: each model's
constructor arguments and the metadata). ``python -m bridge to-orbax`` writes one, and every
training checkpoint step (``RUN/checkpoints/STEP/``) is one too, with the training state beside
it, so ``--init-from``, ``bridge to-pt`` and ``bridge inspect`` read either the same way.
Directories of the first format (``models.json`` instead of ``models/``) are still read.
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

from marl_jax.errors import MarlJaxError
from marl_jax.files import fsync_dir
from marl_jax.models.registry import abstract_variables, build_module, module_config

MODELS_ITEM = "models"
VARIABLES_ITEM = "variables"
MODELS_JSON_V1 = "models.json"
FORMAT_VERSION = 2


class ModelStoreError(MarlJaxError, ValueError):
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


def model_items(
    agents: Mapping[str, Mapping],
    critic: Mapping,
    modules: Mapping[str, nn.Module],
    metadata: Mapping | None = None,
) -> dict[str, Any]:
    """The Orbax items of a model directory, to save alone or inside a training checkpoint."""
    tree = {
        "agents": {name: jax.tree.map(np.asarray, v) for name, v in agents.items()},
        "critic": jax.tree.map(np.asarray, critic),
    }
    info = {
        "format_version": FORMAT_VERSION,
        "agents": list(agents),
        "configs": {name: module_config(m) for name, m in modules.items()},
        "metadata": _json_safe(dict(metadata or {})),
    }
    return {
        VARIABLES_ITEM: ocp.args.StandardSave(tree),
        MODELS_ITEM: ocp.args.JsonSave(info),
    }


def is_model_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds models in either format (a training step included)."""
    directory = Path(directory)
    has_info = (directory / MODELS_ITEM).is_dir() or (directory / MODELS_JSON_V1).is_file()
    return has_info and (directory / VARIABLES_ITEM).is_dir()


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
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    tmp = staging / directory.name
    try:
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        checkpointer.save(
            tmp, args=ocp.args.Composite(**model_items(agents, critic, modules, metadata))
        )
        for name, writer in (sidecars or {}).items():
            writer(tmp / name)
        if directory.exists():
            os.replace(directory, staging / ".old")
        os.replace(tmp, directory)
        fsync_dir(directory.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_models(directory: str | os.PathLike) -> ModelBundle:
    """Reads a model directory (either format) or a training checkpoint step."""
    directory = Path(directory).absolute()
    if not is_model_dir(directory):
        raise ModelStoreError(
            f"{directory}: not a marl-jax model directory (expected {VARIABLES_ITEM}/ and "
            f"{MODELS_ITEM}/); create one with `python -m bridge to-orbax FILE.pt DIR`"
        )
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    v1 = directory / MODELS_JSON_V1
    try:
        if v1.is_file():
            info = json.loads(v1.read_text())
        else:
            info = checkpointer.restore(
                directory, args=ocp.args.Composite(**{MODELS_ITEM: ocp.args.JsonRestore()})
            )[MODELS_ITEM]
        modules = {name: build_module(name, cfg) for name, cfg in info["configs"].items()}
        agent_names = list(info["agents"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, FileNotFoundError) as err:
        raise ModelStoreError(f"{directory}: unreadable model description ({err})") from None
    target = {
        "agents": {name: abstract_variables(modules[name]) for name in agent_names},
        "critic": abstract_variables(modules["critic"]),
    }
    try:
        if v1.is_file():
            tree = ocp.StandardCheckpointer().restore(directory / VARIABLES_ITEM, target)
        else:
            tree = checkpointer.restore(
                directory,
                args=ocp.args.Composite(**{VARIABLES_ITEM: ocp.args.StandardRestore(target)}),
            )[VARIABLES_ITEM]
    except Exception as err:  # Orbax raises many types for damaged checkpoints
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelStoreError(f"{directory / VARIABLES_ITEM}: cannot restore ({first})") from None
    return ModelBundle(
        agents=dict(tree["agents"]),
        critic=tree["critic"],
        modules=modules,
        metadata=info.get("metadata", {}),
    )
