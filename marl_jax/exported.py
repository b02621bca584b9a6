"""Run an exported policy (``python -m marl_jax.export``) with JAX and NumPy only: the
user-facing loader of the artifact that :mod:`marl_jax.run.artifact` writes.

    from marl_jax.exported import load_exported
    policy = load_exported("policy.jaxexport")     # reads policy.jaxexport.json beside it
    out = policy(raw_windows)                      # (B, window, 13) or (window, 13)
    out["actions"], out["probs"], out["position"], out["value"]
    out = policy(raw_windows, position=held)       # a model that observes its position

``position`` (``policy.observe_position``): the signal held at each window's last bar, in
[-1, 1] before volatility sizing (the previous decision's signal), a scalar or ``(B,)``; such a
model needs it, any other ignores it.

``raw_windows`` are the 13 raw features (``marl_jax.env.features.compute_features``, columns in
``policy.feature_names``) of the last ``policy.window`` bars, oldest first; they are normalised
with the saved normalisation (pass ``normalised=True`` for windows already normalised). This
module imports neither Flax nor the model code.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from jax import export

__all__ = ["ExportedPolicy", "load_exported"]


class ExportedPolicy:
    """A deserialized decision artifact and the description written beside it."""

    def __init__(self, artifact: str | Path):
        artifact = Path(artifact)
        sidecar = artifact.with_name(artifact.name + ".json")
        self.info = json.loads(sidecar.read_text())
        self._exported = export.deserialize(bytearray(artifact.read_bytes()))
        norm = self.info["normalisation"]
        self.feature_names: tuple[str, ...] = tuple(self.info["feature_names"])
        self.window: int = int(self.info["window"])
        self.center = np.asarray(norm["center"], dtype=np.float64)
        self.scale = np.asarray(norm["scale"], dtype=np.float64)
        self.clip = float(norm["clip"])
        self.observe_position: bool = bool(self.info.get("observe_position", False))

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """``clip((raw - center) / scale, -clip, clip)`` as float32 (the training's)."""
        x = (np.asarray(raw, dtype=np.float64) - self.center) / self.scale
        return np.clip(x, -self.clip, self.clip).astype(np.float32)

    def __call__(
        self, windows: np.ndarray, normalised: bool = False, position: object = None
    ) -> dict[str, np.ndarray]:
        """Decisions for feature windows ``(B, window, features)`` or one ``(window,
        features)``: ``actions`` (B, 3), ``probs`` (B, 3, 3), ``position`` (B,), ``value``
        (B,); ``position`` is the held signal a model that observes its position reads."""
        windows = np.asarray(windows)
        single = windows.ndim == 2
        if single:
            windows = windows[None]
        want = (self.window, len(self.feature_names))
        if windows.ndim != 3 or windows.shape[1:] != want:
            raise ValueError(
                f"feature windows of shape {windows.shape}; this policy takes (B, {want[0]}, "
                f"{want[1]}): the last {want[0]} bars of {want[1]} features"
            )
        x = windows.astype(np.float32) if normalised else self.normalise(windows)
        args = [jax.numpy.asarray(x)]
        if self.observe_position:
            if position is None:
                raise ValueError(
                    "this policy observes its position: pass position=, the held signal in "
                    "[-1, 1] (a scalar or one per window)"
                )
            held = np.broadcast_to(np.asarray(position, np.float32), x.shape[:1])
            args.append(jax.numpy.asarray(held))
        out = {k: np.asarray(v) for k, v in self._exported.call(*args).items()}
        return {k: v[0] for k, v in out.items()} if single else out


def load_exported(artifact: str | Path) -> ExportedPolicy:
    """Loads ``artifact`` and ``artifact.json`` (see the module docstring)."""
    return ExportedPolicy(artifact)
