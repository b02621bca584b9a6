"""Every config key does something: a whole run reads every leaf of ``Config`` from outside
``marl_jax/config.py`` (validation inside config.py does not count)."""

from __future__ import annotations

import sys

import pytest
import yaml
from pydantic import BaseModel
from tiny_config import TINY

from marl_jax import config as config_module
from marl_jax.config import Config
from marl_jax.run.session import train_run
from marl_jax.run.setup import RunSpec

# Accessors defined in config.py whose reads count, since callers outside use them.
PUBLIC_ACCESSORS = {"batch_size", "minibatch_size", "num_updates", "split_fractions"}


def leaf_paths(model: type[BaseModel], prefix: str = "") -> dict[tuple[str, str], str]:
    """``{(section class name, field): dotted path}`` of every leaf (agents share a class)."""
    out: dict[tuple[str, str], str] = {}
    for name, field in model.model_fields.items():
        tp = field.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out.update(leaf_paths(tp, f"{prefix}{name}."))
        else:
            out.setdefault((model.__name__, name), f"{prefix}{name}")
    return out


def section_classes(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = {model}
    for field in model.model_fields.values():
        tp = field.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found |= section_classes(tp)
    return found


def track_reads(monkeypatch) -> set[tuple[str, str]]:
    reads: set[tuple[str, str]] = set()
    config_file = config_module.__file__

    def counts(frame) -> bool:
        code = frame.f_code
        if code.co_filename == __file__ and code.co_name.startswith("tracked"):
            return counts(frame.f_back)  # this tracker's own wrapper
        if code.co_filename == config_file:  # an accessor counts when its caller does
            return code.co_name in PUBLIC_ACCESSORS and counts(frame.f_back)
        return "pydantic" not in code.co_filename

    for cls in section_classes(Config):
        fields = set(cls.model_fields)
        original = cls.__getattribute__

        def tracked(self, name, _original=original, _fields=fields, _cls=cls):
            if name in _fields and counts(sys._getframe(1)):
                reads.add((_cls.__name__, name))
            return _original(self, name)

        monkeypatch.setattr(cls, "__getattribute__", tracked)
        if "to_kwargs" in cls.__dict__:  # the whole section goes to a model constructor
            to_kwargs = cls.__dict__["to_kwargs"]

            def tracked_kwargs(self, _to_kwargs=to_kwargs, _fields=fields, _cls=cls):
                if counts(sys._getframe(1)):
                    reads.update((_cls.__name__, f) for f in _fields)
                return _to_kwargs(self)

            monkeypatch.setattr(cls, "to_kwargs", tracked_kwargs)
    return reads


def test_the_tracker_sees_reads_outside_config_only(monkeypatch):
    reads = track_reads(monkeypatch)
    cfg = Config()
    assert not reads  # building and validating inside config.py is not a use
    _ = cfg.training.gamma
    assert ("TrainingConfig", "gamma") in reads and ("Config", "training") in reads
    _ = cfg.training.num_updates
    assert ("TrainingConfig", "total_timesteps") in reads


@pytest.mark.slow
def test_every_config_key_is_read_by_a_run(tmp_path, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    reads = track_reads(monkeypatch)
    out = tmp_path / "run"
    train_run(RunSpec(out=str(out), config=str(config)), progress=False)
    unread = sorted(path for key, path in leaf_paths(Config).items() if key not in reads)
    assert not unread, f"config keys that no code outside marl_jax/config.py reads: {unread}"
