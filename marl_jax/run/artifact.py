"""The joint decision as a serialized ``jax.export`` artifact, with a JSON description beside it.

The artifact is the jitted :func:`marl_jax.policy.decision_from_windows` with the models'
variables baked in, for a symbolic batch ``b``: it maps normalised feature windows
``(b, window, 13)`` float32 to ``{"actions", "probs", "position", "value"}``; for a model that
observes its position (``env.observe_position``) it takes a second input, the signal ``(b,)``
float32 held at each window's last bar, and the JSON says ``"observe_position": true``. The JSON
(``ARTIFACT.json``) holds the feature names, the window, the warm-up and the normalisation, so
:mod:`marl_jax.exported` runs it with JAX and NumPy alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import export

from marl_jax.env.features import NUM_FEATURES
from marl_jax.files import atomic_write_bytes, atomic_write_text
from marl_jax.policy import Ensemble, Policy, PolicyError, decision_from_windows

__all__ = ["FORMAT", "export_policy", "sidecar_path"]

FORMAT = "marl-jax-policy/1"


def sidecar_path(artifact: str | Path) -> Path:
    """The JSON beside an artifact: ``policy.jaxexport`` -> ``policy.jaxexport.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def export_policy(
    policy: Policy | Ensemble, out: str | Path, platforms: tuple[str, ...] | None = None
) -> tuple[Path, Path]:
    """Writes the artifact and its JSON (each atomically); returns both paths."""
    out = Path(out)
    if isinstance(policy, Ensemble):
        first = policy.sources[0] if policy.sources else "one member"
        raise PolicyError(
            f"{policy.description}: an artifact holds one model's decision; export each "
            f"member on its own (--model {first}, and so on) and average their positions"
        )
    if out.is_dir():
        raise PolicyError(f"--out {out}: is a folder; give a file name such as policy.jaxexport")
    modules, variables = policy.modules, policy.variables

    def decide(windows: jax.Array, held: jax.Array | None = None) -> dict[str, jax.Array]:
        d = decision_from_windows(modules, variables, windows, held)
        return {"actions": d.actions, "probs": d.probs, "position": d.position, "value": d.value}

    (batch,) = export.symbolic_shape("b")
    specs = [jax.ShapeDtypeStruct((batch, policy.window, NUM_FEATURES), jnp.float32)]
    if policy.observe_position:
        specs.append(jax.ShapeDtypeStruct((batch,), jnp.float32))
    exported = export.export(jax.jit(decide), platforms=platforms)(*specs)
    info = {"format": FORMAT, **policy.metadata(), "platforms": list(exported.platforms)}
    atomic_write_bytes(out, bytes(exported.serialize()))
    sidecar = atomic_write_text(sidecar_path(out), json.dumps(info, indent=2) + "\n")
    return out, sidecar
