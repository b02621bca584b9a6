"""``python -m bridge inspect|verify|to-orbax|to-pt``: PyTorch checkpoints <-> marl-jax."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import torch

from bridge.convert import (
    BridgeError,
    StrategicCheckpoint,
    atomic_torch_save,
    load_pt_checkpoint,
    new_checkpoint,
    read_pt,
    reference_module,
    save_pt_checkpoint,
)
from marl_jax.models.actors import StrategicActor
from marl_jax.models.store import ModelStoreError, load_models, save_models

EXTRA_SIDECAR = "extra_entries.pt"
ACTOR_OUTPUTS = ("action_probs", "logits", "value", "log_prob", "entropy", "attention_weights")


def parameter_count(module_name: str, ckpt: StrategicCheckpoint) -> int:
    """Trainable parameters as PyTorch counts them (the critic's unused attention included)."""
    module = ckpt.modules[module_name]
    return sum(p.numel() for p in reference_module(module).parameters())


def cmd_inspect(args: argparse.Namespace) -> int:
    ckpt = load_pt_checkpoint(args.file)
    print(f"{args.file}")
    for name, module in ckpt.modules.items():
        config = ", ".join(f"{k}={v}" for k, v in ckpt.configs[name].items())
        print(f"  {name:6s} {type(module).__name__:18s} {parameter_count(name, ckpt):>10,d} params")
        print(f"         {config}")
    print("  metadata: " + ", ".join(f"{k}={v}" for k, v in ckpt.metadata.items()))
    if ckpt.extra:
        print("  other entries: " + ", ".join(ckpt.extra))
    return 0


def _max_diff(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b.detach().numpy() if isinstance(b, torch.Tensor) else b, np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def verify_checkpoint(
    ckpt: StrategicCheckpoint, source: dict, batch: int, seq_len: int, seed: int
) -> list[tuple[str, str, float]]:
    """Max abs differences between PyTorch reference and Flax outputs on random inputs."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, float]] = []
    agent_inputs = {}
    for name, module in ckpt.modules.items():
        ref = reference_module(module).to_empty(device="cpu")
        state_dict = (
            source["critic"] if name == "critic" else source["agents"][name]
        )  # the file's own tensors
        ref.load_state_dict(state_dict, strict=True)
        ref.eval()
        if isinstance(module, StrategicActor):
            x = rng.standard_normal((batch, module.input_dim, seq_len)).astype(np.float32)
            x[:, 1] = np.abs(x[:, 1]) + 0.05 * (name == "mmd")
            agent_inputs[name] = x
            ours = jax.jit(lambda v, s, m=module: m.apply(v, s, deterministic=True))(
                ckpt.agents[name], x
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
            ours = module.apply(ckpt.critic, states, agent_states=names)
            with torch.no_grad():
                theirs = ref(torch.from_numpy(states), agent_states=names)
            rows.append((name, "value", _max_diff(ours["value"], theirs["value"])))
            for agent, value in ours["agent_values"].items():
                rows.append(
                    (name, f"agent_values/{agent}", _max_diff(value, theirs["agent_values"][agent]))
                )
    return rows


def cmd_verify(args: argparse.Namespace) -> int:
    if args.tolerance < 0:
        raise BridgeError(f"--tolerance must be >= 0, got {args.tolerance}")
    jax.config.update("jax_default_matmul_precision", "highest")
    ckpt = load_pt_checkpoint(args.file)
    source = read_pt(args.file)["model_state_dicts"]
    rows = verify_checkpoint(ckpt, source, args.batch, args.seq_len, args.seed)
    failed = 0
    print(f"{'model':7s} {'output':24s} {'max abs diff':>14s}")
    for model, output, diff in rows:
        limit = 0.0 if output == "action (mismatches)" else args.tolerance
        bad = diff > limit
        failed += bad
        print(f"{model:7s} {output:24s} {diff:14.3e}{'  FAIL' if bad else ''}")
    if failed:
        print(
            f"verify: {failed} output(s) differ by more than {args.tolerance:g} in {args.file}",
            file=sys.stderr,
        )
        return 1
    print(f"verify: all outputs within {args.tolerance:g}")
    return 0


def cmd_to_orbax(args: argparse.Namespace) -> int:
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
    bundle = load_models(args.dir)
    extras_path = Path(args.dir) / EXTRA_SIDECAR
    sidecar = read_pt(extras_path) if extras_path.is_file() else {}
    ckpt = new_checkpoint(bundle.agents, bundle.critic, bundle.modules, metadata=bundle.metadata)
    if sidecar:
        ckpt.metadata = sidecar.get("metadata", ckpt.metadata)
        ckpt.extra = sidecar.get("extra", {})
        ckpt.key_order = sidecar.get("key_order", ckpt.key_order)
    save_pt_checkpoint(ckpt, args.file)
    print(f"wrote {args.file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bridge", description="Strategic MARL PyTorch checkpoints <-> marl-jax"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="models, inferred configurations, parameter counts")
    p.add_argument("file", help="a .pt checkpoint")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", help="compare PyTorch reference and Flax outputs")
    p.add_argument("file", help="a .pt checkpoint")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max abs difference allowed")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("to-orbax", help="convert a .pt checkpoint to an Orbax model directory")
    p.add_argument("file", help="a .pt checkpoint")
    p.add_argument("dir", help="output directory")
    p.set_defaults(func=cmd_to_orbax)
    p = sub.add_parser("to-pt", help="convert an Orbax model directory to a .pt checkpoint")
    p.add_argument("dir", help="a directory written by to-orbax or by training")
    p.add_argument("file", help="output .pt file")
    p.set_defaults(func=cmd_to_pt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BridgeError, ModelStoreError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
