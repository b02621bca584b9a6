"""Training checkpoint steps: the training state plus an embedded model directory.

A step saves the models as ``variables`` + ``models`` (the model-directory items of
:mod:`marl_jax.run.modeldir`, whose metadata holds the feature normalisation) and the rest of
the :class:`~marl_jax.mappo.TrainState` (optimizer states, ValueNorm, environments,
hyperparameters, rng, step, and the auxiliary return heads when there are any) as ``state``;
nothing is stored twice. ``restore_state`` joins them back into a ``TrainState`` exactly;
``saved_normalisation`` reads the normalisation back (one per instrument for a
multi-instrument run).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from marl_jax.agents import AUX, MODEL_NAMES
from marl_jax.env.features import FeatureNorm
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.run.checkpointer import TrainCheckpointer
from marl_jax.run.modeldir import MODELS_ITEM, VARIABLES_ITEM, model_items

__all__ = [
    "Normalisations",
    "model_metadata",
    "normalisation_metadata",
    "normalisations_from",
    "restore_state",
    "save_step",
    "saved_normalisation",
]

_MODEL_FIELDS = ("params", "constants")


def _rest(state: TrainState) -> dict[str, Any]:
    rest = {
        field: getattr(state, field)
        for field in state.__dataclass_fields__
        if field not in _MODEL_FIELDS
    }
    if AUX in state.params:  # the auxiliary return heads: trained, but not among the models
        rest[AUX] = state.params[AUX]
    return rest


# Normalisations = one FeatureNorm, or one per instrument (by name) for a multi-instrument run.
Normalisations = FeatureNorm | Mapping[str, FeatureNorm]


def normalisation_metadata(norm: Normalisations) -> dict[str, str]:
    """``feature_normalisation`` (one instrument: as single-instrument runs always saved it), or
    ``feature_normalisations`` (JSON of ``{instrument: normalisation}``) for several."""
    if isinstance(norm, FeatureNorm):
        return {"feature_normalisation": json.dumps(norm.to_dict())}
    by_name = {name: n.to_dict() for name, n in norm.items()}
    return {"feature_normalisations": json.dumps(by_name)}


def normalisations_from(metadata: Mapping[str, Any]) -> Normalisations | None:
    """What :func:`normalisation_metadata` saved in ``metadata`` (None when nothing was)."""

    def loaded(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    if metadata.get("feature_normalisations"):
        by_name = loaded(metadata["feature_normalisations"])
        return {name: FeatureNorm.from_dict(d) for name, d in by_name.items()}
    if metadata.get("feature_normalisation"):
        return FeatureNorm.from_dict(loaded(metadata["feature_normalisation"]))
    return None


def model_metadata(
    state: TrainState, norm: Normalisations, observe_position: bool = False
) -> dict[str, Any]:
    """What a model directory and the ``.pt`` export record beside the weights; models that
    observe their position (``env.observe_position``: every input one wider) say so."""
    held = {"observe_position": True} if observe_position else {}
    return {"trained_updates": int(state.update_step), **normalisation_metadata(norm), **held}


def save_step(
    checkpointer: TrainCheckpointer,
    algo: MAPPO,
    state: TrainState,
    *,
    norm: Normalisations,
    metrics: Mapping[str, Any],
) -> int:
    """Saves ``state`` as step ``state.update_step`` (its models recording ``norm``) and waits
    until it is on disk."""
    step = int(state.update_step)
    variables = algo.model_variables(state)
    metadata = model_metadata(state, norm, algo.config.env.observe_position)
    checkpointer.save(
        step,
        _rest(state),
        metrics=metrics,
        models=model_items(variables["agents"], variables["critic"], algo.modules, metadata),
    )
    checkpointer.wait_until_finished()
    return step


def restore_state(
    checkpointer: TrainCheckpointer, algo: MAPPO, target: TrainState, step: int | None = None
) -> tuple[TrainState, dict[str, Any]]:
    """``(state, metrics)`` of ``step`` (default: the latest), shaped like ``target``."""
    rest, metrics = checkpointer.restore(step, target=_rest(target))
    step = int(rest["update_step"]) if step is None else step
    variables = checkpointer.restore_item(step, VARIABLES_ITEM, algo.model_variables(target))
    by_model = {**variables["agents"], "critic": variables["critic"]}
    params = {name: by_model[name]["params"] for name in MODEL_NAMES}
    if AUX in rest:
        params[AUX] = rest.pop(AUX)
    constants = {
        name: {k: v for k, v in by_model[name].items() if k != "params"} for name in MODEL_NAMES
    }
    return target.replace(params=params, constants=constants, **rest), metrics


def saved_normalisation(checkpointer: TrainCheckpointer, step: int) -> Normalisations | None:
    """The feature normalisation (one per instrument for several) that step ``step`` was
    trained with (its models' metadata)."""
    info = checkpointer.restore_json(step, MODELS_ITEM)
    return normalisations_from(info["metadata"])
