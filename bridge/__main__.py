"""``python -m bridge inspect|verify|to-orbax|to-pt``: PyTorch checkpoints <-> marl-jax.

``inspect``, ``verify`` and ``to-pt`` read any model source: a ``.pt`` file, a model directory,
a run directory (``RUN``, ``RUN:latest``, ``RUN:STEP``) or a checkpoint step
(``RUN/checkpoints/STEP``), see :mod:`marl_jax.run.sources`. Imports are lazy: ``inspect`` of a
``.pt`` file reads the state dicts with PyTorch alone and never imports JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge import BridgeError
from marl_jax.errors import MarlJaxError, cli_main

EXTRA_SIDECAR = "extra_entries.pt"
ACTOR_OUTPUTS = ("action_probs", "logits", "value", "log_prob", "entropy", "attention_weights")
SOURCE_HELP = (
    "a .pt file, a model directory, a run directory (RUN, RUN:latest, RUN:STEP) or a "
    "checkpoint step (RUN/checkpoints/STEP)"
)


def open_source(spec: str) -> tuple[Any, Any]:
    """``(source, bundle)``: bundle is the ``ModelBundle`` of a non-``.pt`` source, else None
    (``.pt`` files are read by the commands themselves, with all their entries)."""
    from marl_jax.run.sources import load_models_from, resolve_source

    source = resolve_source(spec)
    if source.kind == "pt":
        return source, None
    return load_models_from(spec)


def read_sidecar(source: Any) -> dict:
    """The entries ``to-orbax`` kept beside a model directory (original metadata, optimizer
    states ...), or ``{}``."""
    from bridge.pt_file import read_pt

    path = Path(source.path) / EXTRA_SIDECAR
    return read_pt(path) if path.is_file() else {}


# ----------------------------------------------------------------------------- inspect


def inspect_pt(path: Path) -> tuple[list[tuple[str, str, int, dict]], dict, list[str]]:
    """Rows ``(name, class, parameters, config)``, metadata and other entries of a ``.pt``
    file, from its tensors alone (no JAX); every problem is reported at once."""
    import torch

    from bridge import pt_file

    # Elementwise checks of a few million values: a thread pool costs more than it saves here
    # (tens of milliseconds per tensor on a busy machine).
    torch.set_num_threads(1)
    data = pt_file.read_pt(path)
    rows, problems = [], []
    for name, state_dict, label in pt_file.checkpoint_state_dicts(data, path):
        try:
            config = pt_file.checked_config(name, state_dict, label)
        except BridgeError as err:
            problems.append(str(err))
            continue
        count = pt_file.parameter_count(state_dict)
        rows.append((name, pt_file.class_name(name), count, config))
    if problems:
        raise BridgeError(f"{path}: " + " | ".join(problems))
    metadata = data.get("metadata", {})
    metadata = metadata if isinstance(metadata, dict) else {"value": metadata}
    extra = [k for k in data if k not in (pt_file.STATE_DICTS_KEY, "metadata")]
    return rows, metadata, extra


def inspect_bundle(source: Any, bundle: Any) -> tuple[list[tuple[str, str, int, dict]], dict, list]:
    """The same as :func:`inspect_pt` for the Flax models of a model directory or run."""
    from bridge.pt_file import parameter_count, template_state_dict
    from marl_jax.models.registry import module_config

    rows = []
    for name, module in bundle.modules.items():
        count = parameter_count(template_state_dict(name, module_config(module)))
        rows.append((name, type(module).__name__, count, module_config(module)))
    sidecar = read_sidecar(source)
    metadata = sidecar.get("metadata", bundle.metadata) if sidecar else bundle.metadata
    return rows, metadata, list(sidecar.get("extra", {}))


def cmd_inspect(args: argparse.Namespace) -> int:
    source, bundle = open_source(args.source)
    if bundle is None:
        rows, metadata, extra = inspect_pt(source.path)
    else:
        rows, metadata, extra = inspect_bundle(source, bundle)
    print(f"read {source.description}")
    for name, class_name, count, config in rows:
        print(f"  {name:6s} {class_name:18s} {count:>10,d} params")
        print("         " + ", ".join(f"{k}={v}" for k, v in config.items()))
    print("  metadata: " + ", ".join(f"{k}={v}" for k, v in metadata.items()))
    if extra:
        print("  other entries: " + ", ".join(extra))
    return 0


# ----------------------------------------------------------------------------- verify


def _max_diff(a: Any, b: Any) -> float:
    import numpy as np
    import torch

    a = np.asarray(a, np.float64)
    b = np.asarray(b.detach().numpy() if isinstance(b, torch.Tensor) else b, np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def verify_models(
    modules: Mapping[str, Any],
    variables: Mapping[str, Mapping],
    state_dicts: Mapping[str, Mapping],
    batch: int,
    seq_len: int,
    seed: int,
) -> list[tuple[str, str, float]]:
    """Max abs differences between the PyTorch reference (loaded with ``state_dicts``) and the
    Flax models (with ``variables``) on the same random inputs, the agents before the critic."""
    import jax
    import numpy as np
    import torch

    from bridge.pt_file import reference_model
    from marl_jax.models.actors import StrategicActor
    from marl_jax.models.registry import module_config

    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, float]] = []
    agent_inputs = {}
    for name, module in modules.items():
        ref = reference_model(name, module_config(module))
        ref.load_state_dict(state_dicts[name], strict=True)
        ref.eval()
        if isinstance(module, StrategicActor):
            x = rng.standard_normal((batch, module.input_dim, seq_len)).astype(np.float32)
            x[:, 1] = np.abs(x[:, 1]) + 0.05 * (name == "mmd")
            agent_inputs[name] = x
            ours = jax.jit(lambda v, s, m=module: m.apply(v, s, deterministic=True))(
                variables[name], x
            )
            with torch.no_grad():
                theirs = ref(torch.from_numpy(x), deterministic=True)
            for key in ACTOR_OUTPUTS:
                rows.append((name, key, _max_diff(ours[key], theirs[key])))
            mismatched = int((np.asarray(ours["action"]) != theirs["action"].numpy()).sum())
            rows.append((name, "action (mismatches)", float(mismatched)))
        else:
            states = np.concatenate([agent_inputs[n].mean(-1) for n in agent_inputs], axis=-1)
            if states.shape[-1] != module.state_dim:
                states = rng.standard_normal((batch, module.state_dim)).astype(np.float32)
            names = dict.fromkeys(agent_inputs)
            ours = module.apply(variables[name], states, agent_states=names)
            with torch.no_grad():
                theirs = ref(torch.from_numpy(states), agent_states=names)
            rows.append((name, "value", _max_diff(ours["value"], theirs["value"])))
            for agent, value in ours["agent_values"].items():
                rows.append(
                    (name, f"agent_values/{agent}", _max_diff(value, theirs["agent_values"][agent]))
                )
    return rows


def _critic_last(items: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in items.items() if k != "critic"}, "critic": items["critic"]}


def cmd_verify(args: argparse.Namespace) -> int:
    if args.tolerance < 0:
        raise BridgeError(f"--tolerance must be >= 0, got {args.tolerance}")
    source, bundle = open_source(args.source)
    import jax

    from bridge import convert

    jax.config.update("jax_default_matmul_precision", "highest")
    if bundle is None:
        data = convert.read_pt(source.path)
        ckpt = convert.checkpoint_from_data(data, source.path)
        modules, agents, critic = ckpt.modules, ckpt.agents, ckpt.critic
        state_dicts = data[convert.STATE_DICTS_KEY]  # the file's own tensors
        state_dicts = {**state_dicts["agents"], "critic": state_dicts["critic"]}
    else:
        modules, agents, critic = bundle.modules, bundle.agents, bundle.critic
        state_dicts = None
    variables = {**agents, "critic": critic}
    if state_dicts is None:  # the PyTorch reference gets the same weights, converted
        state_dicts = {n: convert.flax_to_torch(variables[n], modules[n]) for n in modules}
    print(f"read {source.description}")
    rows = verify_models(
        _critic_last(modules), variables, state_dicts, args.batch, args.seq_len, args.seed
    )
    failed = 0
    print(f"{'model':7s} {'output':24s} {'max abs diff':>14s}")
    for model, output, diff in rows:
        limit = 0.0 if output == "action (mismatches)" else args.tolerance
        bad = diff > limit
        failed += bad
        print(f"{model:7s} {output:24s} {diff:14.3e}{'  FAIL' if bad else ''}")
    if failed:
        print(
            f"verify: {failed} output(s) differ by more than {args.tolerance:g} in {args.source}",
            file=sys.stderr,
        )
        return 1
    print(f"verify: all outputs within {args.tolerance:g}")
    return 0


# ----------------------------------------------------------------------------- conversions


def cmd_to_orbax(args: argparse.Namespace) -> int:
    from bridge.convert import atomic_torch_save, load_pt_checkpoint
    from marl_jax.run.modeldir import save_models

    ckpt = load_pt_checkpoint(args.file)
    sidecar = {"metadata": ckpt.metadata, "extra": ckpt.extra, "key_order": ckpt.key_order}
    out = save_models(
        args.dir,
        ckpt.agents,
        ckpt.critic,
        ckpt.modules,
        ckpt.metadata,
        sidecars={EXTRA_SIDECAR: lambda path: atomic_torch_save(sidecar, path)},
    )
    print(f"wrote {out} ({', '.join(ckpt.modules)})")
    return 0


def cmd_to_pt(args: argparse.Namespace) -> int:
    source, bundle = open_source(args.source)
    from bridge.convert import load_pt_checkpoint, new_checkpoint, save_pt_checkpoint

    if bundle is None:
        ckpt = load_pt_checkpoint(source.path)
    else:
        ckpt = new_checkpoint(
            bundle.agents, bundle.critic, bundle.modules, metadata=bundle.metadata
        )
        sidecar = read_sidecar(source)
        if sidecar:
            ckpt.metadata = sidecar.get("metadata", ckpt.metadata)
            ckpt.extra = sidecar.get("extra", {})
            ckpt.key_order = sidecar.get("key_order", ckpt.key_order)
    print(f"read {source.description}")
    save_pt_checkpoint(ckpt, args.file)
    print(f"wrote {args.file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bridge", description="Strategic MARL PyTorch checkpoints <-> marl-jax"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="models, inferred configurations, parameter counts")
    p.add_argument("source", metavar="SRC", help=SOURCE_HELP)
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", help="compare PyTorch reference and Flax outputs")
    p.add_argument("source", metavar="SRC", help=SOURCE_HELP)
    p.add_argument("--tolerance", type=float, default=1e-5, help="max abs difference allowed")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("to-orbax", help="convert a .pt checkpoint to an Orbax model directory")
    p.add_argument("file", metavar="FILE.pt", help="a .pt checkpoint")
    p.add_argument("dir", metavar="DIR", help="output directory")
    p.set_defaults(func=cmd_to_orbax)
    p = sub.add_parser("to-pt", help="write any model source as a .pt checkpoint")
    p.add_argument("source", metavar="SRC", help=SOURCE_HELP)
    p.add_argument("file", metavar="OUT.pt", help="output .pt file")
    p.set_defaults(func=cmd_to_pt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        try:  # without torch this names the extra to install, in one line
            importlib.import_module("bridge.pt_file")
        except ImportError as err:
            raise MarlJaxError(str(err)) from None
        return args.func(args)

    return cli_main(body)


if __name__ == "__main__":
    sys.exit(main())
