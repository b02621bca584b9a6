"""PyTorch state dicts <-> Flax variables, and ``.pt`` checkpoint files <-> StrategicCheckpoint.

Keys are renamed by rule and tensors transposed by layer kind:

- ``a.0.b.weight`` -> module path ``a_0/b`` (a numeric segment joins the name before it);
- ``weight`` of a Linear ``(out, in)`` -> ``kernel`` ``(in, out)``; of a Conv1d ``(out, in, k)``
  -> ``kernel`` ``(k, in, out)``; of a norm -> ``scale``; ``bias`` stays ``bias``;
- recurrent tensors (``weight_ih_l0`` ...) keep their names and PyTorch layout;
- ``running_mean``/``running_var``/``num_batches_tracked`` -> ``batch_stats`` ``mean``/``var``/
  ``num_batches_tracked`` (int64 <-> int32);
- ``pe`` and the critic's unused ``agent_attention`` tensors -> ``buffers``, unchanged.

The expected keys, their order, shapes and dtypes come from the ``bridge.torch_reference`` twin
with the same configuration (``bridge.pt_file.template_state_dict``), so every problem in a
state dict is found and reported at once before anything is converted or written. Reading
``.pt`` files, the configuration inference and the state-dict checks need no JAX and live in
``bridge.pt_file``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bridge import TORCH_MISSING

try:
    import torch
except ImportError:
    raise ImportError(TORCH_MISSING) from None

import flax.linen as nn
import numpy as np

from bridge.pt_file import (
    AGENT_NAMES,
    BN_NAMES,
    MIN_TORCH,
    STATE_DICTS_KEY,
    BridgeError,
    checkpoint_state_dicts,
    infer_config,
    read_pt,
    state_dict_problems,
    template_state_dict,
)
from bridge.pt_file import raise_problems as _raise_problems
from marl_jax.files import atomic_write_with
from marl_jax.models.registry import MODEL_CLASSES, abstract_variables, build_module, module_config

__all__ = [
    "MIN_TORCH",
    "STATE_DICTS_KEY",
    "BridgeError",
    "StrategicCheckpoint",
    "atomic_torch_save",
    "checkpoint_from_data",
    "checkpoint_to_dict",
    "flax_slot",
    "flax_to_torch",
    "infer_config",
    "load_pt_checkpoint",
    "new_checkpoint",
    "read_pt",
    "save_pt_checkpoint",
    "state_dict_problems",
    "torch_to_flax",
]

BN_TORCH_NAMES = {v: k for k, v in BN_NAMES.items()}
RNN_LEAF = re.compile(r"^(weight|bias)_(ih|hh)_l\d+(_reverse)?$")
TOP_LEVEL_PARAMS = ("temperature", "volatility_adjust")
BUFFER_MODULES = ("agent_attention",)


# ----------------------------------------------------------------------------- key mapping


@dataclasses.dataclass(frozen=True)
class FlaxSlot:
    """Where a state-dict entry lives in the Flax variables, and how it is laid out."""

    collection: str
    path: tuple[str, ...]
    kind: str  # "linear", "conv", "plain", "count"


def _module_path(segments: list[str]) -> list[str]:
    path: list[str] = []
    for segment in segments:
        if segment.isdigit() and path:
            path[-1] = f"{path[-1]}_{segment}"
        else:
            path.append(segment)
    return path


def flax_slot(key: str, ndim: int) -> FlaxSlot:
    """Maps a PyTorch state-dict key (and its tensor rank) to its Flax location."""
    *modules, leaf = key.split(".")
    path = _module_path(modules)
    if not path and leaf in TOP_LEVEL_PARAMS:
        return FlaxSlot("params", (leaf,), "plain")
    if path and path[0] in BUFFER_MODULES:
        return FlaxSlot("buffers", (path[0], "_".join([*path[1:], leaf])), "plain")
    if leaf == "pe":
        return FlaxSlot("buffers", (*path, leaf), "plain")
    if leaf in BN_NAMES:
        kind = "count" if leaf == "num_batches_tracked" else "plain"
        return FlaxSlot("batch_stats", (*path, BN_NAMES[leaf]), kind)
    if RNN_LEAF.match(leaf):
        return FlaxSlot("params", (*path, leaf), "plain")
    if leaf == "bias":
        return FlaxSlot("params", (*path, "bias"), "plain")
    if leaf == "weight":
        kinds = {1: ("scale", "plain"), 2: ("kernel", "linear"), 3: ("kernel", "conv")}
        if ndim in kinds:
            name, kind = kinds[ndim]
            return FlaxSlot("params", (*path, name), kind)
    raise BridgeError(f"state-dict key {key!r} (rank {ndim}) has no Flax counterpart")


def _to_flax_array(tensor: torch.Tensor, kind: str) -> np.ndarray:
    array = tensor.detach().cpu().numpy()
    if kind == "linear":
        array = array.T
    elif kind == "conv":
        array = array.transpose(2, 1, 0)
    elif kind == "count":
        if abs(int(array)) > np.iinfo(np.int32).max:
            raise BridgeError(f"num_batches_tracked {int(array)} does not fit in int32")
        array = array.astype(np.int32)
    return np.array(array, order="C", copy=True)


def _to_torch_tensor(array: Any, kind: str, dtype: torch.dtype) -> torch.Tensor:
    array = np.asarray(array)
    if kind == "linear":
        array = array.T
    elif kind == "conv":
        array = array.transpose(2, 1, 0)
    return torch.from_numpy(np.array(array, copy=True)).to(dtype)


# ----------------------------------------------------------------------------- templates


def _template(module: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The original's state dict (keys, order, shapes, dtypes) for a Flax model."""
    for name, cls in MODEL_CLASSES.items():
        if type(module) is cls:
            return template_state_dict(name, module_config(module))
    raise TypeError(f"not a Strategic MARL model: {type(module).__name__}")


# ----------------------------------------------------------------------------- module level


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, name)))
        else:
            flat[(*prefix, name)] = value
    return flat


def torch_to_flax(
    state_dict: Mapping[str, torch.Tensor], module: nn.Module, *, where: str = "state dict"
) -> dict:
    """Converts a PyTorch state dict into the Flax variables of ``module``.

    All missing/unexpected keys, shape or dtype mismatches and NaN/Inf tensors are reported in
    one ``BridgeError``.
    """
    template = _template(module)
    _raise_problems(state_dict_problems(state_dict, template), where)
    variables: dict = {}
    for key, expected in template.items():
        slot = flax_slot(key, expected.dim())
        _set_path(
            variables, (slot.collection, *slot.path), _to_flax_array(state_dict[key], slot.kind)
        )
    _check_structure(variables, module, where)
    return variables


def _check_structure(variables: Mapping, module: nn.Module, where: str) -> None:
    expected = {
        path: (tuple(leaf.shape), np.dtype(leaf.dtype))
        for path, leaf in _flatten(abstract_variables(module)).items()
    }
    found = {
        path: (tuple(np.shape(leaf)), np.asarray(leaf).dtype)
        for path, leaf in _flatten(variables).items()
    }
    problems = [f"missing {'/'.join(p)} {s}" for p, s in expected.items() if p not in found]
    problems += [f"unexpected {'/'.join(p)}" for p in found if p not in expected]
    problems += [
        f"{'/'.join(p)}: expected {expected[p]}, found {found[p]}"
        for p in found
        if p in expected and found[p] != expected[p]
    ]
    _raise_problems(problems, where)


def flax_to_torch(variables: Mapping, module: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Converts Flax variables of ``module`` into a state dict in the original's layout."""
    where = f"{type(module).__name__} variables"
    _check_structure(variables, module, where)
    flat = _flatten(variables)
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, expected in _template(module).items():
        slot = flax_slot(key, expected.dim())
        value = flat[(slot.collection, *slot.path)]
        state_dict[key] = _to_torch_tensor(value, slot.kind, expected.dtype)
    problems = [
        f"{key}: {int((~torch.isfinite(t)).sum())} NaN/Inf values"
        for key, t in state_dict.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    _raise_problems(problems, where)
    return state_dict


# ----------------------------------------------------------------------------- checkpoint level


@dataclasses.dataclass
class StrategicCheckpoint:
    """A Strategic MARL checkpoint converted to Flax.

    ``agents`` maps agent name to Flax variables, ``critic`` holds the critic's variables,
    ``modules`` the ready Flax modules (configurations inferred from the tensor shapes),
    ``metadata`` the metadata dict and ``extra`` every other top-level entry as loaded
    (optimizer states, metrics). ``key_order`` remembers the top-level entry order.
    """

    agents: dict[str, dict]
    critic: dict
    metadata: dict
    modules: dict[str, nn.Module]
    extra: dict = dataclasses.field(default_factory=dict)
    key_order: list[str] = dataclasses.field(default_factory=list)

    @property
    def configs(self) -> dict[str, dict]:
        """Constructor arguments of every model, by name."""
        return {name: module_config(module) for name, module in self.modules.items()}


def load_pt_checkpoint(path: str | os.PathLike) -> StrategicCheckpoint:
    """Loads an original-format ``.pt`` checkpoint into Flax variables and modules."""
    path = Path(path)
    return checkpoint_from_data(read_pt(path), path)


def checkpoint_from_data(data: Any, path: str | os.PathLike) -> StrategicCheckpoint:
    """Converts the dict loaded from ``path`` (see :func:`read_pt`) to a checkpoint.

    Every problem of every model is reported at once, in one ``BridgeError`` naming ``path``.
    """
    modules: dict[str, nn.Module] = {}
    agents: dict[str, dict] = {}
    problems: list[str] = []
    for name, sd, label in checkpoint_state_dicts(data, path):
        try:
            module = build_module(name, infer_config(name, sd, label))
            variables = torch_to_flax(sd, module, where=label)
        except BridgeError as err:
            problems.append(str(err))
            continue
        modules[name] = module
        if name == "critic":
            critic = variables
        else:
            agents[name] = variables
    if problems:
        raise BridgeError(f"{path}: " + " | ".join(problems))
    metadata = data.get("metadata", {})
    extra = {k: v for k, v in data.items() if k not in (STATE_DICTS_KEY, "metadata")}
    return StrategicCheckpoint(
        agents=agents,
        critic=critic,
        metadata=metadata if isinstance(metadata, dict) else {"value": metadata},
        modules=modules,
        extra=extra,
        key_order=list(data),
    )


def checkpoint_to_dict(ckpt: StrategicCheckpoint) -> dict:
    """The original's checkpoint dict (``model_state_dicts``, ``metadata``, other entries)."""
    state_dicts = {
        "agents": {name: flax_to_torch(v, ckpt.modules[name]) for name, v in ckpt.agents.items()},
        "critic": flax_to_torch(ckpt.critic, ckpt.modules["critic"]),
    }
    entries = {STATE_DICTS_KEY: state_dicts, "metadata": ckpt.metadata, **ckpt.extra}
    order = [k for k in ckpt.key_order if k in entries] + [
        k for k in entries if k not in ckpt.key_order
    ]
    return {key: entries[key] for key in order}


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` into a temporary file beside ``path``, then rename: never half-written.

    The file is fsynced and gets the umask's mode (``marl_jax.files.atomic_write_with``).
    A failed write leaves ``path`` as it was and raises a one-line ``BridgeError``.
    """
    path = Path(path)

    def write(fh: IO[bytes]) -> None:
        torch.save(obj, fh)

    try:
        atomic_write_with(path, write)
    except Exception as err:  # disk full, unpicklable objects, ...: one line naming the file
        first = (str(err).strip().splitlines() or [""])[0]
        raise BridgeError(f"{path}: cannot write ({type(err).__name__}: {first})") from err


def save_pt_checkpoint(ckpt: StrategicCheckpoint, path: str | os.PathLike) -> None:
    """Writes ``ckpt`` in the original ``.pt`` format, atomically."""
    atomic_torch_save(checkpoint_to_dict(ckpt), path)


def new_checkpoint(
    agents: Mapping[str, Mapping],
    critic: Mapping,
    modules: Mapping[str, nn.Module],
    metadata: Mapping | None = None,
    extra: Mapping | None = None,
) -> StrategicCheckpoint:
    """A checkpoint from Flax variables (e.g. after training), with default metadata."""
    meta = {"config_version": "1.0", "created": _now_iso(), "source": "marl-jax"}
    meta.update(dict(metadata or {}))
    return StrategicCheckpoint(
        agents={name: agents[name] for name in AGENT_NAMES if name in agents},
        critic=dict(critic),
        metadata=meta,
        modules=dict(modules),
        extra=dict(extra or {}),
        key_order=[STATE_DICTS_KEY, "metadata"],
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
