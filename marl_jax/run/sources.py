"""Where models come from: one resolver for every reader (``--init-from``, ``bridge``).

A source spec is one of:

- ``FILE.pt``: an original PyTorch checkpoint (read through the bridge, which needs torch);
- ``MODEL_DIR``: a model directory (``bridge to-orbax`` output);
- ``RUN``: a training run directory: its best checkpoint; ``RUN:latest`` or ``RUN:STEP``
  pick another;
- ``RUN/checkpoints/STEP``: a single checkpoint step (which is a model directory).

Resolving a ``.pt`` file imports neither JAX nor Orbax, so the bridge can answer quickly.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

from marl_jax.errors import MarlJaxError
from marl_jax.run.rundir import CONFIG, RunDir, ensemble_members

if TYPE_CHECKING:
    from marl_jax.run.modeldir import ModelBundle

__all__ = ["ModelSource", "SourceError", "load_models_from", "resolve_source"]

_PICK = re.compile(r"^(?P<path>.+?):(?P<pick>latest|best|\d+)$")


class SourceError(MarlJaxError, ValueError):
    """A model source that cannot be found or read; the message is one line."""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A resolved source: its kind, the file or folder read, and a line for humans."""

    kind: str  # "pt" | "model_dir" | "run" | "checkpoint_step"
    path: Path
    description: str


def _run_checkpoint_dir(run: Path) -> Path:
    """The checkpoint folder of a run (its config's ``checkpoint.dir``)."""
    from marl_jax.config import ConfigError, load_config

    try:
        name = load_config(run / CONFIG).checkpoint.dir
    except ConfigError:
        name = "checkpoints"
    return RunDir(run, name).checkpoints


def _pick_step(run: Path, pick: str, spec: str) -> ModelSource:
    from marl_jax.run.checkpointer import TrainCheckpointer

    ckpt_dir = _run_checkpoint_dir(run)
    if not ckpt_dir.is_dir():
        raise SourceError(f"{spec}: run directory {run} has no checkpoints in {ckpt_dir}")
    with TrainCheckpointer(ckpt_dir, read_only=True, async_save=False) as ckpt:
        steps = ckpt.all_steps()
        if not steps:
            raise SourceError(f"{spec}: run directory {run} has no finished checkpoint yet")
        if pick == "best":
            step = ckpt.best_step()
            step = steps[-1] if step is None else step
            label = "best checkpoint"
        elif pick == "latest":
            step, label = steps[-1], "latest checkpoint"
        else:
            step, label = int(pick), "checkpoint"
            if step not in steps:
                raise SourceError(
                    f"{spec}: run {run} has no checkpoint step {step}; it has "
                    f"{', '.join(map(str, steps))} (or use :best / :latest)"
                )
    return ModelSource("run", ckpt_dir / str(step), f"run directory {run}: {label}, step {step}")


def resolve_source(spec: str) -> ModelSource:
    """Which kind of source ``spec`` names, and the file or folder to read."""
    text = str(spec)
    path = Path(text)
    pick = "best"
    match = _PICK.match(text)
    if not path.exists() and match and Path(match["path"]).is_dir():
        path, pick = Path(match["path"]), match["pick"]
    if not path.exists():
        raise SourceError(
            f"{text}: no such file or folder; give a .pt file, a model directory, a run "
            "directory (RUN, RUN:latest, RUN:STEP) or a checkpoint step"
        )
    if path.is_file():
        return ModelSource("pt", path, f".pt file {path}")
    members = ensemble_members(path)
    if members is not None:
        raise SourceError(
            f"{text}: an ensemble of {len(members)} runs (ensemble: {len(members)}); one model "
            f"is one of its members: give {members[0]} (or another member_I)"
        )
    if (path / CONFIG).is_file():
        return _pick_step(path, pick, text)
    if pick != "best":
        raise SourceError(f"{text}: :{pick} applies to run directories; {path} is not one")
    from marl_jax.run.modeldir import is_model_dir

    if is_model_dir(path):
        if (path / "state").is_dir() and path.name.isdigit():
            return ModelSource(
                "checkpoint_step", path, f"checkpoint step {path.name} in {path.parent}"
            )
        return ModelSource("model_dir", path, f"model directory {path}")
    raise SourceError(
        f"{text}: a folder, but not a run directory ({CONFIG}), a model directory or a "
        "checkpoint step; give one of those or a .pt file"
    )


def load_models_from(spec: str) -> tuple[ModelSource, ModelBundle]:
    """The models of any source spec (see the module docstring) and where they came from."""
    source = resolve_source(spec)
    if source.kind == "pt":
        try:
            from bridge.convert import BridgeError, load_pt_checkpoint
        except ImportError as err:
            raise SourceError(
                f"{spec}: reading .pt files needs the bridge and PyTorch ({err}); install "
                "'marl-jax[torch]' or convert first with `python -m bridge to-orbax FILE.pt DIR`"
            ) from None
        try:
            ckpt = load_pt_checkpoint(source.path)
        except BridgeError as err:
            raise SourceError(str(err)) from None
        from marl_jax.run.modeldir import ModelBundle

        bundle = ModelBundle(ckpt.agents, ckpt.critic, ckpt.modules, ckpt.metadata)
        return source, bundle
    from marl_jax.run.modeldir import ModelStoreError, load_models

    try:
        return source, load_models(source.path)
    except ModelStoreError as err:
        raise SourceError(str(err)) from None
