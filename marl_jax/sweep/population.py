"""A population of training runs as one program, sharded over every device of every process.

Every leaf of a :class:`Population` has a leading member axis, split over a one-axis device
mesh (``pop``) with ``NamedSharding``: each device trains its slice of the members with the
vmapped MAPPO update, and each process builds only the members its devices hold. A population
whose size does not divide by the device count is padded with copies of its last member; the
padding is never alive, never ranked and dropped from every output.

A member whose update gives a non-finite metric is frozen (its state stays that of its last
good update) and marked dead; the others go on. Recurrent layers run on the ``lax.scan``
backend here: cuDNN's LSTM has no vmap rule, and on an H200 the vmapped scan was faster than
a ``lax.map`` over members of cuDNN's LSTM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from marl_jax.config import Config
from marl_jax.env import market
from marl_jax.hparams import HPARAM_NAMES, HyperParams
from marl_jax.mappo import MAPPO, TrainState
from marl_jax.sweep.pbt import apply_plan

__all__ = [
    "Population",
    "PopulationProgram",
    "fitting_width",
    "member_mesh",
    "padded_size",
    "width_for_memory",
]

Array = jax.Array
AXIS = "pop"


@struct.dataclass
class Population:
    """The members' training states (leading axis: member) and whether each is alive."""

    state: TrainState
    alive: Array  # bool (P,)


def member_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (``pop``) over ``devices`` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    # Auto axis types: XLA propagates the member sharding through the vmapped program.
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def padded_size(size: int, devices: int) -> int:
    """``size`` rounded up to a multiple of ``devices``."""
    return math.ceil(size / devices) * devices


def _pad(values: np.ndarray, padded: int, fill: Any = None) -> np.ndarray:
    """``values`` (leading axis P) padded to ``padded`` rows with copies of its last row (or
    with ``fill``)."""
    extra = padded - values.shape[0]
    if extra <= 0:
        return values
    rows = np.repeat(values[-1:], extra, axis=0)
    if fill is not None:
        rows = np.full_like(rows, fill)
    return np.concatenate([values, rows])


def _finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def _chunked(fn, width: int):
    """``fn`` over one member, run on a device's local members ``width`` at a time: a
    ``lax.map`` over chunks of ``jax.vmap(fn)``. A member's arithmetic then depends on
    ``width`` only, not on how many members a device holds, so a population gives the same
    bits on any number of devices."""

    def run(*args):
        local = jax.tree.leaves(args[0])[0].shape[0]
        chunks = jax.tree.map(lambda x: x.reshape(local // width, width, *x.shape[1:]), args)
        out = jax.lax.map(lambda a: jax.vmap(fn)(*a), chunks)
        return jax.tree.map(lambda x: x.reshape(local, *x.shape[2:]), out)

    return run


class PopulationProgram:
    """The compiled pieces that train ``size`` members of one config group on ``mesh``.

    ``init(seeds, hparams)`` builds the population; ``update(pop)`` runs one MAPPO update of
    every live member; ``exploit(pop, source, hparams)`` applies a PBT round. Inputs and
    outputs are global arrays sharded over the member axis. Each device computes its members
    ``width`` at a time (one vmapped batch; default: all of them at once); the population is
    padded to a multiple of ``width`` x the device count.
    """

    def __init__(
        self,
        config: Config,
        env_params: market.EnvParams,
        size: int,
        mesh: Mesh,
        width: int | None = None,
        init: Mapping[str, Mapping] | None = None,
    ):
        training = config.training.model_copy(update={"rnn_backend": "scan"})
        self.config = config.model_copy(update={"training": training})
        self.algo = MAPPO(self.config, market.MARKET)
        self.size = size
        self.mesh = mesh
        self.width = width if width is not None else math.ceil(size / mesh.size)
        if self.width < 1:
            raise ValueError(f"members per device at once must be >= 1, got {self.width}")
        self.padded = padded_size(size, mesh.size * self.width)
        self.sharded = NamedSharding(mesh, PartitionSpec(AXIS))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.env_params = jax.device_put(env_params, self.replicated)
        self._compile(init)

    def _compile(self, init: Mapping[str, Mapping] | None) -> None:
        """The sharded programs: build (``init`` the models' starting variables), update and
        exploit."""
        algo, width, mesh = self.algo, self.width, self.mesh
        spec, rep = PartitionSpec(AXIS), PartitionSpec()

        def one_init(seed, hp, env_params):
            return algo.init(jax.random.key(seed), env_params, init, hp)

        def one_update(state, alive, env_params):
            new, metrics = algo.update(state, env_params)
            ok = alive & _finite((metrics, new.params, new.opt_state, new.value_norm))
            kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
            return kept, ok, metrics

        def local_build(seeds, hparams, alive, env_params):
            state = _chunked(lambda s, h: one_init(s, h, env_params), width)(seeds, hparams)
            return Population(state=state, alive=alive)

        def local_update(pop, env_params):
            step = _chunked(lambda s, a: one_update(s, a, env_params), width)
            state, alive, metrics = step(pop.state, pop.alive)
            return Population(state=state, alive=alive), metrics

        def per_device(fn, in_specs, out_specs):
            return jax.shard_map(
                fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
            )

        def exploit(pop: Population, source: Array, hparams: HyperParams) -> Population:
            return pop.replace(state=apply_plan(pop.state, source, hparams))

        s, r = self.sharded, self.replicated
        self._build = jax.jit(
            per_device(local_build, (spec, spec, spec, rep), spec),
            in_shardings=(s, s, s, r),
            out_shardings=s,
        )
        self._update = jax.jit(
            per_device(local_update, (spec, rep), (spec, spec)),
            in_shardings=(s, r),
            out_shardings=(s, s),
            donate_argnums=0,
        )
        self._exploit = jax.jit(exploit, in_shardings=(s, s, s), out_shardings=s)

    # ------------------------------------------------------------------ host <-> device

    def to_global(self, values: np.ndarray, fill: Any = None) -> Array:
        """A global array sharded over members from the whole ``(P or padded, ...)`` table
        (every process passes the same table; each places only its own devices' rows)."""
        values = _pad(np.asarray(values), self.padded, fill)
        return jax.make_array_from_callback(values.shape, self.sharded, lambda idx: values[idx])

    def hparams(self, table: Mapping[str, np.ndarray]) -> HyperParams:
        """Global :class:`HyperParams` from per-member float arrays (every field)."""
        return HyperParams(
            **{k: self.to_global(np.asarray(v, np.float32)) for k, v in table.items()}
        )

    def gather(self, tree: Any) -> Any:
        """The whole tree on every process as NumPy arrays, padding dropped."""
        full = multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(lambda x: np.asarray(x)[: self.size], full)

    # ------------------------------------------------------------------ programs

    def init(self, seeds: np.ndarray, table: Mapping[str, np.ndarray]) -> Population:
        """The population: member ``i`` starts as ``algo.init(key(seeds[i]), ..., hparams_i)``,
        exactly as a solo run with that seed and those hyperparameters."""
        alive = np.arange(self.padded) < self.size
        return self._build(
            self.to_global(np.asarray(seeds, np.uint32)),
            self.hparams(table),
            self.to_global(alive),
            self.env_params,
        )

    def update(self, pop: Population) -> tuple[Population, dict[str, Array]]:
        """One update of every live member (dead and padding members stay frozen)."""
        return self._update(pop, self.env_params)

    def exploit(
        self, pop: Population, source: np.ndarray, table: Mapping[str, np.ndarray]
    ) -> Population:
        """A PBT round: member ``i`` copies member ``source[i]``, then takes ``table``'s
        hyperparameters (see :func:`marl_jax.sweep.pbt.apply_plan`)."""
        src = np.concatenate([source, np.arange(self.size, self.padded)]).astype(np.int32)
        return self._exploit(pop, self.to_global(src), self.hparams(table))

    def abstract(self) -> Population:
        """Shapes, dtypes and shardings of the population (a restore target)."""
        seeds = jax.ShapeDtypeStruct((self.padded,), jnp.uint32, sharding=self.sharded)
        f32 = jax.ShapeDtypeStruct((self.padded,), jnp.float32, sharding=self.sharded)
        hp = HyperParams(**{k: f32 for k in HPARAM_NAMES})
        alive = jax.ShapeDtypeStruct((self.padded,), jnp.bool_, sharding=self.sharded)
        return jax.eval_shape(self._build, seeds, hp, alive, self.env_params)

    def from_host(self, host: Population) -> Population:
        """A global population from whole host arrays (saved with any padding: the rows past
        ``size`` are dropped and this mesh's padding is added, never alive)."""
        state = jax.tree.map(lambda x: self.to_global(np.asarray(x)[: self.size]), host.state)
        alive = self.to_global(np.asarray(host.alive)[: self.size], fill=False)
        return Population(state=state, alive=alive)


def width_for_memory(
    local_members: int, per_member_bytes: int, free_bytes: int, headroom: float = 0.7
) -> int:
    """Members a device can train at once: all ``local_members`` if they fit in ``headroom``
    of ``free_bytes`` at ``per_member_bytes`` each, else the fewest equal waves that fit (at
    least one member at a time)."""
    if per_member_bytes <= 0:
        return local_members
    fits = max(1, min(local_members, int(headroom * free_bytes // per_member_bytes)))
    waves = math.ceil(local_members / fits)
    return math.ceil(local_members / waves)


def fitting_width(
    config: Config, env_params: market.EnvParams, size: int, mesh: Mesh
) -> int | None:
    """The vmap width that fits a device's memory, from the compiled one-member-at-a-time
    update's memory analysis and the device's free memory; None where the device reports no
    memory limit (the CPU: all local members at once)."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
        return None
    one = PopulationProgram(config, env_params, size, mesh, width=1)
    compiled = one._update.lower(one.abstract(), one.env_params).compile()
    analysis = compiled.memory_analysis()
    per_member = int(getattr(analysis, "temp_size_in_bytes", 0))
    state_bytes = int(getattr(analysis, "argument_size_in_bytes", 0))
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)) - state_bytes
    width = width_for_memory(one.padded // mesh.size, per_member, free)
    # Every process must build the same program: the smallest width any of them can hold.
    return int(np.min(multihost_utils.process_allgather(np.int32(width))))
