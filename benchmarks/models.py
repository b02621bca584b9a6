"""Full-size actors and critic: JAX/Flax vs the PyTorch reference, same weights, same inputs.

For each model it times inference (eval mode, deterministic) and a training step's
forward + backward (loss = sum of log-probs of given actions + sum of values), as the median
of ``--repeats`` runs after warm-up, with the device synchronised. Both sides run float32 at
full matmul precision (TF32 off in PyTorch, ``highest`` in JAX); ``--tf32`` allows TF32 on
both. PyTorch's LSTM/GRU use cuDNN on a GPU; JAX runs its own scans.

    python benchmarks/models.py --batch 256 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bridge.convert import flax_to_torch, reference_module
from marl_jax.models.actors import AGENT_ORDER
from marl_jax.models.registry import build_module, init_variables


def median_ms(fn, repeats: int, sync) -> float:
    for _ in range(3):
        sync(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_model(name: str, args, device: str, torch_sync, rng) -> list[tuple[str, float, float]]:
    """(mode, PyTorch ms, JAX ms) rows for one full-size model."""
    module = build_module(name)
    variables = init_variables(module, jax.random.key(0))
    ref = reference_module(module).to_empty(device="cpu")
    ref.load_state_dict(flax_to_torch(variables, module), strict=True)
    ref = ref.to(device).eval()
    if name == "critic":
        x = rng.standard_normal((args.batch, module.state_dim)).astype(np.float32)
    else:
        x = rng.standard_normal((args.batch, module.input_dim, args.seq_len)).astype(np.float32)
        x[:, 1] = np.abs(x[:, 1])
    actions = rng.integers(0, 3, args.batch)
    xj, aj = jnp.asarray(x), jnp.asarray(actions, jnp.int32)
    xt = torch.from_numpy(x).to(device)
    at = torch.from_numpy(actions).to(device)

    if name == "critic":
        infer_j = jax.jit(lambda v, s: module.apply(v, s)["value"])

        def loss_j(p, s):
            return module.apply({**variables, "params": p}, s)["value"].sum()

        def infer_t():
            with torch.no_grad():
                return ref(xt)["value"]

        def loss_t():
            return ref(xt)["value"].sum()
    else:
        infer_j = jax.jit(lambda v, s: module.apply(v, s, deterministic=True)["action_probs"])

        def loss_j(p, s):
            out = module.apply({**variables, "params": p}, s, actions=aj)
            return out["log_prob"].sum() + out["value"].sum()

        def infer_t():
            with torch.no_grad():
                return ref(xt, deterministic=True)["action_probs"]

        def loss_t():
            out = ref.evaluate_actions(xt, at)
            return out["log_prob"].sum() + out["value"].sum()

    grad_j = jax.jit(jax.grad(loss_j))

    def train_t():
        ref.zero_grad(set_to_none=True)
        loss = loss_t()
        loss.backward()
        return loss

    rows = [
        (
            "inference",
            median_ms(infer_t, args.repeats, torch_sync),
            median_ms(lambda: infer_j(variables, xj), args.repeats, jax.block_until_ready),
        ),
        (
            "fwd+bwd",
            median_ms(train_t, args.repeats, torch_sync),
            median_ms(lambda: grad_j(variables["params"], xj), args.repeats, jax.block_until_ready),
        ),
    ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--tf32", action="store_true")
    args = ap.parse_args()
    jax.config.update("jax_default_matmul_precision", "default" if args.tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tsync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def torch_sync(out):
        tsync()
        return out

    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, PyTorch {torch.__version__} on "
        f"{device}; batch {args.batch}, sequence {args.seq_len}, "
        f"{'TF32 allowed' if args.tf32 else 'full float32'}"
    )
    print(f"{'model':7s} {'mode':10s} {'pytorch ms':>11s} {'jax ms':>9s} {'jax speed-up':>13s}")
    rng = np.random.default_rng(0)
    for name in (*AGENT_ORDER, "critic"):
        for mode, t_ms, j_ms in bench_model(name, args, device, torch_sync, rng):
            print(f"{name:7s} {mode:10s} {t_ms:11.2f} {j_ms:9.2f} {t_ms / j_ms:12.2f}x")


if __name__ == "__main__":
    main()
