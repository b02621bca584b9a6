"""Original ``.pt`` checkpoints read with PyTorch alone (no JAX, no Flax).

Safe loading (``weights_only=True``) with one-line errors, the checkpoint's structure, each
model's configuration inferred from its tensor shapes, the state-dict checks against the
``bridge.torch_reference`` twin, and parameter counts. This is all ``python -m bridge inspect
FILE.pt`` needs; ``bridge.convert`` builds the Flax side on it.
"""

from __future__ import annotations

import copy
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge import TORCH_MISSING, BridgeError

try:
    import torch
except ImportError:
    raise ImportError(TORCH_MISSING) from None

from bridge import torch_reference
from marl_jax.agents import AGENT_NAMES  # no JAX

MIN_TORCH = (2, 10)
STATE_DICTS_KEY = "model_state_dicts"
BN_NAMES = {
    "running_mean": "mean",
    "running_var": "var",
    "num_batches_tracked": "num_batches_tracked",
}
BUFFER_LEAVES = ("pe",)
"""Registered buffers (not parameters) other than the BatchNorm statistics."""

__all__ = [
    "AGENT_NAMES",
    "BN_NAMES",
    "BridgeError",
    "STATE_DICTS_KEY",
    "checked_config",
    "checkpoint_state_dicts",
    "class_name",
    "default_config",
    "infer_config",
    "parameter_count",
    "raise_problems",
    "read_pt",
    "reference_model",
    "state_dict_problems",
    "template_state_dict",
]


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


if _torch_version() < MIN_TORCH:
    raise ImportError(
        f"the bridge needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} for safe weights_only loading; "
        f"found {torch.__version__}: pip install 'marl-jax[torch]'"
    )


# ----------------------------------------------------------------------------- reading


def read_pt(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if lines and lines[0].lower().startswith("weights only load failed"):
            detail = next(
                (line for line in lines if "unsupported" in line.lower()), "a disallowed object"
            )
            raise BridgeError(
                f"{path}: refused: the file holds pickled code or objects that safe loading "
                f"(weights_only=True) does not allow ({detail.rstrip('.')}); nothing was "
                "executed. Re-save it with plain tensors, dicts, lists, strings and numbers"
            ) from None
        raise BridgeError(f"{path}: not a PyTorch checkpoint ({(lines or ['?'])[0]})") from None
    except Exception as err:  # torch.load raises many types for damaged files
        first = (str(err).strip().split(".")[0] or "?").splitlines()[0]
        raise BridgeError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format; "
            f"{type(err).__name__}: {first})"
        ) from None


def checkpoint_state_dicts(data: Any, path: str | os.PathLike) -> list[tuple[str, Mapping, str]]:
    """``(model name, state dict, label)`` of every model in a loaded checkpoint dict, the
    agents first (in the file's order), then the critic."""
    if not isinstance(data, dict) or STATE_DICTS_KEY not in data:
        raise BridgeError(
            f"{path}: not a Strategic MARL checkpoint: expected a dict with a "
            f"'{STATE_DICTS_KEY}' entry"
        )
    dicts = data[STATE_DICTS_KEY]
    agents_sd = dicts.get("agents") if isinstance(dicts, dict) else None
    if not isinstance(agents_sd, dict) or not isinstance(dicts.get("critic"), dict):
        raise BridgeError(
            f"{path}: '{STATE_DICTS_KEY}' must hold an 'agents' dict and a 'critic' state dict"
        )
    unknown = [name for name in agents_sd if name not in AGENT_NAMES]
    if unknown:
        raise BridgeError(
            f"{path}: unknown agent(s) {unknown} in {STATE_DICTS_KEY}.agents; expected "
            f"{list(AGENT_NAMES)}"
        )
    named = [(name, agents_sd[name], f"agents.{name}") for name in agents_sd]
    named.append(("critic", dicts["critic"], "critic"))
    return named


# ----------------------------------------------------------------------------- configurations


def default_config(name: str) -> dict:
    """Constructor arguments of model ``name`` at the defaults (the Flax models' defaults)."""
    if name not in torch_reference.DEFAULT_CONFIGS:
        raise BridgeError(f"unknown model {name!r}; expected one of {list(AGENT_NAMES)} or critic")
    return copy.deepcopy(torch_reference.DEFAULT_CONFIGS[name])


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in state_dict or not isinstance(state_dict[key], torch.Tensor):
        raise BridgeError(f"{where}: missing {key}, needed to infer the model configuration")
    return tuple(state_dict[key].shape)


def infer_config(name: str, state_dict: Mapping[str, torch.Tensor], where: str = "") -> dict:
    """Constructor arguments of model ``name`` inferred from its tensor shapes.

    Sizes that leave no trace in the tensors (dropout, the unused third MLMI/MMD conv channel
    count, sequence length) keep their defaults.
    """
    where = where or name
    defaults = default_config(name)
    if name == "critic":
        first = _shape(state_dict, "feature_extractor.0.weight", where)
        use_ln = "feature_extractor.1.weight" in state_dict
        index, hidden = (4 if use_ln else 3), [first[0]]
        while f"feature_extractor.{index}.fc1.weight" in state_dict:
            hidden.append(_shape(state_dict, f"feature_extractor.{index}.fc1.weight", where)[0])
            index += 1
        n_agents = 0
        while f"agent_value_heads.{n_agents}.weight" in state_dict:
            n_agents += 1
        return {
            **defaults,
            "state_dim": first[1],
            "n_agents": n_agents,
            "hidden_dims": hidden,
            "use_layer_norm": use_ln,
        }
    conv0 = _shape(state_dict, "conv_layers.0.conv.weight", where)
    conv1 = _shape(state_dict, "conv_layers.1.conv.weight", where)
    channels = [conv0[0], conv1[0], defaults["conv_channels"][-1]]
    if "conv_layers.2.conv.weight" in state_dict:
        channels[-1] = _shape(state_dict, "conv_layers.2.conv.weight", where)[0]
    hidden = [_shape(state_dict, "feature_proj.weight", where)[0]]
    layer_key = "output_layers.{}.0.weight" if name == "mmd" else "output_layers.{}.fc1.weight"
    while layer_key.format(len(hidden) - 1) in state_dict:
        hidden.append(_shape(state_dict, layer_key.format(len(hidden) - 1), where)[0])
    return {
        **defaults,
        "input_dim": conv0[1],
        "hidden_dims": hidden,
        "action_dim": _shape(state_dict, "output_head.3.weight", where)[0],
        "conv_channels": channels,
        "kernel_sizes": [conv0[2], conv1[2]],
    }


def _reference_class(name: str) -> type[torch.nn.Module]:
    if name == "critic":
        return torch_reference.CentralizedCritic
    return torch_reference.AGENT_CLASSES[name]


def class_name(name: str) -> str:
    """The model class of model ``name`` (the same in PyTorch and Flax): ``MLMIActor`` ..."""
    return _reference_class(name).__name__


def reference_model(name: str, config: Mapping[str, Any]) -> torch.nn.Module:
    """The ``bridge.torch_reference`` model ``name`` with ``config``, freshly initialised.

    Built on the CPU: a few freshly initialised megabytes cost less than the first ``arange``
    on the meta device, which imports PyTorch's decompositions (about a second).
    """
    with torch.device("cpu"), torch.no_grad():
        return _reference_class(name)(**config)


# ----------------------------------------------------------------------------- checks


def state_dict_problems(
    state_dict: Mapping[str, Any], template: Mapping[str, torch.Tensor]
) -> list[str]:
    """Every missing key, unexpected key, shape or dtype mismatch and non-finite tensor."""
    problems = []
    for key, expected in template.items():
        if key not in state_dict:
            problems.append(f"missing {key} (expected {tuple(expected.shape)})")
            continue
        found = state_dict[key]
        if not isinstance(found, torch.Tensor):
            problems.append(f"{key}: expected a tensor, found {type(found).__name__}")
        elif tuple(found.shape) != tuple(expected.shape):
            problems.append(
                f"{key}: expected shape {tuple(expected.shape)}, found {tuple(found.shape)}"
            )
        elif found.dtype != expected.dtype:
            problems.append(f"{key}: expected dtype {expected.dtype}, found {found.dtype}")
        elif found.is_floating_point() and not bool(torch.isfinite(found).all()):
            bad = int((~torch.isfinite(found)).sum())
            problems.append(f"{key}: {bad} NaN/Inf values")
    problems += [f"unexpected {key}" for key in state_dict if key not in template]
    return problems


def raise_problems(problems: list[str], where: str) -> None:
    """One ``BridgeError`` listing every problem, if there are any."""
    if problems:
        raise BridgeError(f"{where}: {len(problems)} problem(s): " + "; ".join(problems))


def checked_config(name: str, state_dict: Mapping[str, Any], where: str) -> dict:
    """The inferred configuration of a state dict that matches it in every key, shape, dtype,
    with finite values (else one ``BridgeError`` listing every problem)."""
    config = infer_config(name, state_dict, where)
    raise_problems(state_dict_problems(state_dict, template_state_dict(name, config)), where)
    return config


def parameter_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Trainable parameters as PyTorch counts them: every entry but the BatchNorm statistics
    and registered buffers such as ``pe`` (the critic's unused ``agent_attention`` counts)."""
    return sum(
        tensor.numel()
        for key, tensor in state_dict.items()
        if key.rsplit(".", 1)[-1] not in (*BN_NAMES, *BUFFER_LEAVES)
    )


def template_state_dict(name: str, config: Mapping[str, Any]) -> OrderedDict[str, torch.Tensor]:
    """The original's state-dict keys, order, shapes and dtypes for model ``name``."""
    return reference_model(name, config).state_dict()
