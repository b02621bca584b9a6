"""Every config key does something: a whole run reads every leaf of ``Config`` from outside
``marl_jax/config.py`` (validation inside config.py does not count).

A model section (``agents.*``, ``critic``) goes to a model constructor whole, through
``to_kwargs``; its keys count only when the model's own code then reads the constructor
argument of that name (building a model with an argument it ignores is not a use).
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import pytest
import yaml
from pydantic import BaseModel
from tiny_config import TINY

from marl_jax import config as config_module
from marl_jax.config import AgentConfig, Config, CriticConfig
from marl_jax.models import actors, components, critic
from marl_jax.models.actors import MMDActor, StrategicActor
from marl_jax.models.critic import CentralizedCritic
from marl_jax.models.registry import init_variables
from marl_jax.run.session import train_run
from marl_jax.run.setup import RunSpec

# Accessors defined in config.py whose reads count, since callers outside use them.
PUBLIC_ACCESSORS = {"batch_size", "minibatch_size", "num_updates", "split_fractions"}
# The model class each model section's keys are constructor arguments of.
MODEL_OF_SECTION = {AgentConfig.__name__: StrategicActor, CriticConfig.__name__: CentralizedCritic}
MODEL_CODE = {actors.__file__, critic.__file__, components.__file__}


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


def track_model_reads(monkeypatch) -> dict[type, set[str]]:
    """``{model class: constructor arguments its own code read}`` (not ``__post_init__``'s
    normalisation, not the dataclass machinery, not the registry's generic helpers)."""
    reads: dict[type, set[str]] = {cls: set() for cls in MODEL_OF_SECTION.values()}
    for cls in reads:
        fields = {f.name for f in dataclasses.fields(cls)}
        original = cls.__getattribute__

        def tracked(self, name, _original=original, _fields=fields, _cls=cls):
            if name in _fields:
                code = sys._getframe(1).f_code
                if code.co_filename in MODEL_CODE and code.co_name != "__post_init__":
                    reads[_cls].add(name)
            return _original(self, name)

        monkeypatch.setattr(cls, "__getattribute__", tracked)
    return reads


def track_reads(monkeypatch):
    """A function returning the ``(section class name, field)`` pairs read so far."""
    reads: set[tuple[str, str]] = set()
    passed: set[str] = set()  # model sections whose to_kwargs a caller outside used
    model_reads = track_model_reads(monkeypatch)
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
        if cls.__name__ in MODEL_OF_SECTION:
            to_kwargs = cls.to_kwargs

            def tracked_kwargs(self, _to_kwargs=to_kwargs, _cls=cls):
                if counts(sys._getframe(1)):
                    passed.add(_cls.__name__)
                return _to_kwargs(self)

            monkeypatch.setattr(cls, "to_kwargs", tracked_kwargs)

    def result() -> set[tuple[str, str]]:
        used = {
            (section, name)
            for section in passed
            for name in model_reads[MODEL_OF_SECTION[section]]
            if name in config_module.__dict__[section].model_fields
        }
        return reads | used

    return result


def test_the_tracker_sees_reads_outside_config_only(monkeypatch):
    reads = track_reads(monkeypatch)
    cfg = Config()
    assert not reads()  # building and validating inside config.py is not a use
    _ = cfg.training.gamma
    assert ("TrainingConfig", "gamma") in reads() and ("Config", "training") in reads()
    _ = cfg.training.num_updates
    assert ("TrainingConfig", "total_timesteps") in reads()


def test_a_model_section_counts_only_where_the_model_reads_it(monkeypatch):
    reads = track_reads(monkeypatch)
    kwargs = Config().agents.mmd.to_kwargs()
    assert not {key for key in reads() if key[0] == "AgentConfig"}  # passed, not yet used
    kwargs.update(hidden_dims=[8, 8], conv_channels=[4, 4, 4])
    init_variables(MMDActor(**kwargs, sequence_length=4), jax.random.key(0))
    used = {name for section, name in reads() if section == "AgentConfig"}
    assert used == set(AgentConfig.model_fields)  # the forward pass reads every one
    assert not {key for key in reads() if key[0] == "CriticConfig"}


@pytest.mark.slow
def test_every_config_key_is_read_by_a_run(tmp_path, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    reads = track_reads(monkeypatch)
    out = tmp_path / "run"
    train_run(RunSpec(out=str(out), config=str(config)), progress=False)
    unread = sorted(path for key, path in leaf_paths(Config).items() if key not in reads())
    assert not unread, f"config keys that no code outside marl_jax/config.py reads: {unread}"


# ---------------------------------------------------------------- the bar interval's keys


def _cfg_for(data, **env):
    from marl_jax.config import config_from_dict

    return config_from_dict(
        {**TINY, "env": {**TINY["env"], "data_path": None if data is None else str(data), **env}}
    )


def test_env_periods_per_year_overrides_the_measured_calendar(tmp_path):
    from calendars import us_daily, write_bars

    from marl_jax.env.data import synthetic_bars
    from marl_jax.env.market import periods_per_year_at
    from marl_jax.run.setup import env_params_for, load_market, periods_per_year_for

    data = write_bars(tmp_path / "daily.csv", us_daily(300))
    measured = _cfg_for(data)
    bars = load_market(measured)
    assert periods_per_year_for(measured, bars) == pytest.approx(252, rel=0.03)
    given = _cfg_for(data, periods_per_year=260.0)
    assert periods_per_year_for(given, bars) == 260.0
    assert env_params_for(given, bars, "test", None).periods_per_year == 260.0
    # The synthetic market's bars: their nominal calendar, unless given.
    synthetic = _cfg_for(None, interval_minutes=60)
    hourly = synthetic_bars(3000, seed=0, interval_minutes=60)
    assert periods_per_year_for(synthetic, hourly) == periods_per_year_at(60) == 252 * 24
    assert periods_per_year_for(_cfg_for(None, periods_per_year=99.0), hourly) == 99.0


def test_env_resample_minutes_resamples_a_file_with_one_line(tmp_path):
    import pandas as pd
    from calendars import bar_frame

    from marl_jax.env.data import DataError
    from marl_jax.run.setup import load_markets

    stamps = pd.date_range("2021-03-01 09:00", periods=120, freq="5min")
    data = tmp_path / "fine.csv"
    bar_frame(stamps).to_csv(data, index=False)
    said = []
    (bars,) = load_markets(_cfg_for(data), say=said.append).values()
    assert len(bars) == 120 and said == []  # the file's own interval
    (bars,) = load_markets(_cfg_for(data, resample_minutes=30), say=said.append).values()
    assert len(bars) == 20 and bars.interval_minutes == 30
    assert said == [f"{data}: resampled 5-minute bars to 30-minute bars (120 to 20 bars)"]
    with pytest.raises(DataError, match="env.resample_minutes 1 is finer than the bars' 5-minute"):
        load_markets(_cfg_for(data, resample_minutes=1))


# ---------------------------------------------------------------- env.observe_position


def test_env_observe_position_widens_every_input_and_observation():
    from marl_jax.agents import AGENT_BY_NAME, AGENT_NAMES, CRITIC_STATE_DIM
    from marl_jax.env import data
    from marl_jax.models.team import build_modules
    from marl_jax.run.setup import env_params_for

    bars = data.synthetic_bars(600, seed=0)
    for on in (False, True):
        cfg = _cfg_for(None, observe_position=on)
        modules = build_modules(cfg)
        obs = market_observation(env_params_for(cfg, bars, "train", None))
        assert modules["critic"].state_dim == CRITIC_STATE_DIM + on == obs["critic"].shape[-1]
        for name in AGENT_NAMES:
            assert modules[name].input_dim == AGENT_BY_NAME[name].input_dim + on
            assert obs[name].shape[0] == modules[name].input_dim


def market_observation(params):
    from marl_jax.env.market import observation_at

    return observation_at(params, int(params.start_lo), 0.5)
