"""A trained :class:`~marl_jax.policy.Policy` from any model source: the disk side of a policy.

``load_policy(source, norm_from=None, instrument=None)`` reads any source ``--init-from``
accepts (a run, ``RUN:STEP``, a checkpoint step, a model directory or a ``.pt``;
:func:`marl_jax.run.sources.load_models_from`) with the feature normalisation saved beside the
models, and the config of the run it belongs to (``policy.config``; a ``.pt`` or a model
directory has none). An original ``.pt`` saves no normalisation: ``norm_from`` names a source
whose normalisation (and, for a ``.pt``, window and run config) to use. A model trained on
several instruments saved one normalisation per instrument; ``instrument`` (the bar file's
name, as the training run named it) picks one. Whether the models observe their position
(``env.observe_position``) follows from their inputs, one wider than the agent table's; the
metadata's ``observe_position`` says so too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from marl_jax.agents import AGENT_NAMES, MODEL_NAMES
from marl_jax.config import Config, ConfigError, load_config
from marl_jax.env.features import FeatureNorm
from marl_jax.models.registry import module_config
from marl_jax.policy import Ensemble, Policy, PolicyError
from marl_jax.run.rundir import CONFIG, ensemble_members
from marl_jax.run.sources import load_models_from
from marl_jax.run.steps import normalisations_from

__all__ = ["load_policy"]


def _norm_of(
    bundle_metadata: Mapping, source: str, instrument: str | None = None
) -> FeatureNorm | None:
    """The saved normalisation; of a multi-instrument model, that of ``instrument``."""
    saved = normalisations_from(bundle_metadata)
    if saved is None or isinstance(saved, FeatureNorm):
        return saved
    if instrument in saved:
        return saved[instrument]
    names = ", ".join(saved)
    raise PolicyError(
        f"{source}: trained on several instruments ({names}), each with its own feature "
        f"normalisation, and the bar file {instrument} is none of them; give the bar file the "
        "name of the instrument it holds"
    )


def _run_config(kind: str, path: Path) -> Config | None:
    """The config of the run a source belongs to (``RUN/checkpoints/STEP``), if any."""
    if kind not in ("run", "checkpoint_step"):
        return None
    for parent in path.parents[:2]:
        if (parent / CONFIG).is_file():
            try:
                return load_config(parent / CONFIG)
            except ConfigError:
                return None
    return None


def _window(source: str, config: Config | None, modules: Mapping[str, nn.Module]) -> int:
    """The window a model was trained on: its run's ``env.window``, else its actors' length."""
    if config is not None:
        return config.env.window
    lengths = {name: module_config(modules[name])["sequence_length"] for name in AGENT_NAMES}
    if len(set(lengths.values())) != 1:
        listed = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise PolicyError(
            f"{source}: the actors' windows differ ({listed}); a decision needs one window"
        )
    return lengths[AGENT_NAMES[0]]


def load_policy(
    source: str, norm_from: str | None = None, instrument: str | None = None
) -> Policy | Ensemble:
    """The models of any model source; the normalisation saved with them, or that of
    ``norm_from`` (required for an original ``.pt``, which carries none). A model trained
    on several instruments saved one per instrument: ``instrument`` (the bar file's name,
    as the training run named it) picks one. The folder of a run trained with ``ensemble``
    K > 1 gives an :class:`~marl_jax.policy.Ensemble` of its members' best checkpoints."""
    members = ensemble_members(Path(source))
    if members is not None:
        return _load_ensemble(Path(source), members, norm_from, instrument)
    return _load_one(source, norm_from, instrument)


def _load_ensemble(
    root: Path, members: list[Path], norm_from: str | None, instrument: str | None
) -> Ensemble:
    """The ensemble run ``root``'s members (each a finished run) as one policy."""
    missing = [m for m in members if not (m / CONFIG).is_file()]
    if missing:
        raise PolicyError(
            f"{root}: member {missing[0].name} has not been trained; finish the ensemble with "
            f"`python -m marl_jax.train --resume --out {root}`"
        )
    policies = [_load_one(str(m), norm_from, instrument) for m in members]
    try:
        config = load_config(root / CONFIG)
    except ConfigError:
        config = None
    described = f"ensemble {root} ({len(members)} members)"
    return Ensemble(policies, described, config, tuple(str(m) for m in members))


def _load_one(source: str, norm_from: str | None, instrument: str | None) -> Policy:
    """:func:`load_policy` of a source that holds one model."""
    resolved, bundle = load_models_from(source)
    missing = [name for name in MODEL_NAMES if name not in bundle.modules]
    if missing:
        raise PolicyError(f"{source}: the checkpoint has no {', '.join(missing)} model")
    config = _run_config(resolved.kind, resolved.path)
    window = _window(source, config, bundle.modules)
    norm = None if norm_from is not None else _norm_of(bundle.metadata, source, instrument)
    if norm_from is not None:
        other, other_bundle = load_models_from(norm_from)
        norm = _norm_of(other_bundle.metadata, f"--norm-from {norm_from}", instrument)
        if norm is None:
            raise PolicyError(f"--norm-from {norm_from}: has no saved feature normalisation")
        other_config = _run_config(other.kind, other.path)
        other_window = _window(norm_from, other_config, other_bundle.modules)
        if resolved.kind == "pt":  # a .pt does not record its window: take the run's
            window = other_window
        elif other_window != window:
            raise PolicyError(
                f"--norm-from {norm_from}: it was trained on {other_window}-bar windows "
                f"but the model {source} on {window}; use a source of the same window"
            )
        config = config or other_config
    elif norm is None:
        raise PolicyError(
            f"{source}: no feature normalisation is saved with this model (an original "
            ".pt); pass --norm-from RUN, a run or model trained on bars like these"
        )
    variables = {name: bundle.agents[name] for name in AGENT_NAMES}
    variables["critic"] = bundle.critic
    variables = jax.tree.map(jnp.asarray, variables)
    modules = {name: bundle.modules[name] for name in MODEL_NAMES}
    policy = Policy(modules, variables, norm, int(window), resolved.description, config)
    if bool(bundle.metadata.get("observe_position", False)) and not policy.observe_position:
        raise PolicyError(
            f"{source}: its metadata says observe_position, but its models take no position "
            "input; the file is inconsistent: export it again from its run"
        )
    return policy
