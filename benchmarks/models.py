"""Full-size actors and critic: JAX/Flax vs the PyTorch reference, same weights, same inputs.

For each model it times inference (eval mode, deterministic) and a training step's
forward + backward in training mode with dropout 0 (loss = sum of log-probs of given actions
+ sum of values; cuDNN's RNN backward needs training mode), as the median
of ``--repeats`` runs after warm-up, with the device synchronised. Both sides run float32 at
full matmul precision (TF32 off in PyTorch, ``highest`` in JAX); ``--tf32`` allows TF32 on
both. PyTorch's LSTM/GRU use cuDNN on a GPU; JAX runs its own scans.

    python benchmarks/models.py --batch 256 --repeats 20

``--joint`` prints instead a CPU table of the joint decision (the three actors' greedy actions
and the critic's value, eval mode) at batches 1 and 256 (``--joint-batches``): JAX, one jitted
function, against the PyTorch reference models in eager mode under ``torch.no_grad()``, with
the same weights (PyTorch's initialisation, converted), on the CPU, PyTorch first then JAX,
median of ``--repeats`` runs after 3 warm-up runs each. JAX's actors attend from the last time
step only (``attention_weights=False``, as the trainer decides), the one the decision reads.

    python benchmarks/models.py --joint

``--rnn-backend scan|cudnn|auto`` picks JAX's LSTM (``auto``, the default: cuDNN's LSTM on a
GPU through ``jax.experimental.rnn``, else the scan); ``--models`` limits the table.
``--population P`` times instead the gradient of P different parameter sets of one model
(``--models``, default nwrqk) at once, as a sweep computes it: ``jax.vmap`` of the scan
recurrence against ``lax.map`` over members of cuDNN's LSTM (which has no vmap rule).

    python benchmarks/models.py --batch 256 --models nwrqk --population 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import torch

from bridge import torch_reference
from bridge.convert import torch_to_flax
from marl_jax.agents import AGENT_NAMES
from marl_jax.models.recurrences import resolve_rnn_backend
from marl_jax.models.registry import build_module, init_variables, module_config


def median_ms(fn, repeats: int, sync) -> float:
    for _ in range(3):
        sync(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_model(name: str, args, device: str, rng) -> dict:
    """Timing thunks ``{mode: (pytorch_fn, jax_fn)}`` for one full-size model, same weights."""
    module = build_module(name, {"dropout_rate": 0.0, "rnn_backend": args.backend})
    cls = getattr(torch_reference, type(module).__name__)
    ref = cls(**module_config(module))  # PyTorch's own initialisation
    variables = torch_to_flax(ref.state_dict(), module)
    ref = ref.to(device).eval()
    if name == "critic":
        x = rng.standard_normal((args.batch, module.state_dim)).astype(np.float32)
    else:
        x = rng.standard_normal((args.batch, module.input_dim, args.seq_len)).astype(np.float32)
        x[:, 1] = np.abs(x[:, 1])
    actions = rng.integers(0, 3, args.batch)
    xj, aj = x, actions.astype(np.int32)
    xt = torch.from_numpy(x).to(device)
    at = torch.from_numpy(actions).to(device)

    if name == "critic":
        infer_j = jax.jit(lambda v, s: module.apply(v, s)["value"])

        def loss_j(p, s):
            out, _ = module.apply(
                {**variables, "params": p}, s, train=True, mutable=["batch_stats"]
            )
            return out["value"].sum()

        def infer_t():
            ref.eval()
            with torch.no_grad():
                return ref(xt)["value"]

        def loss_t():
            return ref(xt)["value"].sum()
    else:
        infer_j = jax.jit(lambda v, s: module.apply(v, s, deterministic=True)["action_probs"])

        def loss_j(p, s):
            out, _ = module.apply(
                {**variables, "params": p}, s, actions=aj, train=True, mutable=["batch_stats"]
            )
            return out["log_prob"].sum() + out["value"].sum()

        def infer_t():
            ref.eval()
            with torch.no_grad():
                return ref(xt, deterministic=True)["action_probs"]

        def loss_t():
            out = ref.evaluate_actions(xt, at)
            return out["log_prob"].sum() + out["value"].sum()

    grad_j = jax.jit(jax.grad(loss_j))

    def train_t():
        ref.train()
        ref.zero_grad(set_to_none=True)
        loss = loss_t()
        loss.backward()
        return loss

    return {
        "inference": (infer_t, lambda: infer_j(variables, xj)),
        "fwd+bwd": (train_t, lambda: grad_j(variables["params"], xj)),
    }


def population(args) -> None:
    """Gradient of P parameter sets of one model: vmap of the scan vs lax.map of cuDNN."""
    name = args.models[0]
    rng = np.random.default_rng(0)
    members = args.population
    variables = jax.vmap(lambda k: init_variables(build_module(name, {"dropout_rate": 0.0}), k))(
        jax.random.split(jax.random.key(0), members)
    )
    module0 = build_module(name)
    x = rng.standard_normal((members, args.batch, module0.input_dim, args.seq_len))
    x = x.astype(np.float32)
    actions = rng.integers(0, 3, (members, args.batch)).astype(np.int32)

    def grad_fn(backend):
        module = build_module(name, {"dropout_rate": 0.0, "rnn_backend": backend})

        def loss(p, v, s, a):
            out = module.apply({**v, "params": p}, s, actions=a)
            return out["log_prob"].sum() + out["value"].sum()

        return lambda v, s, a: jax.grad(loss)(v["params"], v, s, a)

    variants = {"vmap(scan)": jax.jit(jax.vmap(grad_fn("scan")))}
    if resolve_rnn_backend("auto") == "cudnn":
        cudnn = grad_fn("cudnn")
        variants["lax.map(cudnn)"] = jax.jit(
            lambda v, s, a: jax.lax.map(lambda m: cudnn(*m), (v, s, a))
        )
    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}; {name} gradient, {members} "
        f"members x batch {args.batch}, sequence {args.seq_len}; median of {args.repeats}"
    )
    print("| variant | ms | ms per member |")
    print("|---|---|---|")
    for label, fn in variants.items():
        ms = median_ms(lambda fn=fn: fn(variables, x, actions), args.repeats, jax.block_until_ready)
        print(f"| {label} | {ms:.2f} | {ms / members:.2f} |", flush=True)


def joint_decision(args) -> None:
    """CPU table: the joint decision, JAX jitted vs PyTorch eager, same weights and inputs."""
    cpu = jax.devices("cpu")[0]
    names = (*AGENT_NAMES, "critic")
    modules = {name: build_module(name) for name in names}  # full size, the original defaults
    refs, variables = {}, {}
    for name, module in modules.items():
        cls = getattr(torch_reference, type(module).__name__)
        refs[name] = cls(**module_config(module)).eval()  # PyTorch's own initialisation
        variables[name] = jax.device_put(torch_to_flax(refs[name].state_dict(), module), cpu)

    @jax.jit
    def decide_j(variables, obs):
        actions = [
            modules[name].apply(
                variables[name], obs[name], deterministic=True, attention_weights=False
            )["action"]
            for name in AGENT_NAMES
        ]
        value = modules["critic"].apply(variables["critic"], obs["critic"])["value"]
        return jax.numpy.stack(actions, -1), value

    def decide_t(obs):
        with torch.no_grad():
            actions = [refs[name](obs[name], deterministic=True)["action"] for name in AGENT_NAMES]
            return torch.stack(actions, -1), refs["critic"](obs["critic"])["value"]

    rng = np.random.default_rng(0)
    inputs = {}
    for batch in args.joint_batches:
        obs = {}
        for name in AGENT_NAMES:
            module = modules[name]
            x = rng.standard_normal((batch, module.input_dim, args.seq_len)).astype(np.float32)
            x[:, 1] = np.abs(x[:, 1])  # MMD reads channel 1 as a (positive) volatility
            obs[name] = x
        obs["critic"] = np.concatenate([obs[n].mean(-1) for n in AGENT_NAMES], axis=-1)
        inputs[batch] = obs

    print(
        f"Joint decision (3 actors + critic, eval mode, greedy actions + value), full-size "
        f"models, sequence {args.seq_len}, on the CPU: JAX {jax.__version__} jitted vs PyTorch "
        f"{torch.__version__} eager ({torch.get_num_threads()} threads); median of "
        f"{args.repeats} runs after 3 warm-up runs"
    )
    # PyTorch first, then JAX: see main().
    torch_ms, torch_out = {}, {}
    for batch, obs in inputs.items():
        obs_t = {k: torch.from_numpy(v) for k, v in obs.items()}
        torch_ms[batch] = median_ms(lambda o=obs_t: decide_t(o), args.repeats, lambda out: out)
        torch_out[batch] = decide_t(obs_t)
    print("| batch | PyTorch eager ms | JAX jit ms | JAX speed-up | actions equal | value diff |")
    print("|---|---|---|---|---|---|")
    for batch, obs in inputs.items():
        obs_j = jax.device_put(obs, cpu)
        sync = jax.block_until_ready
        j_ms = median_ms(lambda o=obs_j: decide_j(variables, o), args.repeats, sync)
        actions_j, value_j = decide_j(variables, obs_j)
        actions_t, value_t = torch_out[batch]
        same = np.array_equal(np.asarray(actions_j), actions_t.numpy())
        diff = float(np.abs(np.asarray(value_j) - value_t.numpy()).max())
        t_ms = torch_ms[batch]
        print(
            f"| {batch} | {t_ms:.2f} | {j_ms:.2f} | {t_ms / j_ms:.2f}x | "
            f"{'yes' if same else 'NO'} | {diff:.1e} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--joint", action="store_true", help="the CPU joint-decision table only")
    ap.add_argument(
        "--joint-batches",
        type=lambda s: [int(b) for b in s.split(",")],
        default=[1, 256],
        help="comma-separated batch sizes of --joint (default 1,256)",
    )
    ap.add_argument("--rnn-backend", default="auto", choices=("auto", "scan", "cudnn"))
    ap.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated models to time (default all; nwrqk with --population)",
    )
    ap.add_argument("--population", type=int, default=0, help="members (see above)")
    args = ap.parse_args()
    args.backend = resolve_rnn_backend(args.rnn_backend)
    jax.config.update("jax_default_matmul_precision", "default" if args.tf32 else "highest")
    if args.joint:
        joint_decision(args)
        return
    if args.population:
        args.models = args.models or ["nwrqk"]
        population(args)
        return
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tsync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def torch_sync(out):
        tsync()
        return out

    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, PyTorch {torch.__version__} on "
        f"{device}; batch {args.batch}, sequence {args.seq_len}, JAX rnn_backend {args.backend}, "
        f"{'TF32 allowed' if args.tf32 else 'full float32'}"
    )
    print(f"{'model':7s} {'mode':10s} {'pytorch ms':>11s} {'jax ms':>9s} {'jax speed-up':>13s}")
    rng = np.random.default_rng(0)
    names = args.models or (*AGENT_NAMES, "critic")
    thunks = {name: bench_model(name, args, device, rng) for name in names}
    # All PyTorch timings first, then all JAX ones: on a CPU, XLA's worker threads keep
    # spinning after JAX work and would slow PyTorch's threads in the same process.
    torch_ms = {
        (name, mode): median_ms(fns[0], args.repeats, torch_sync)
        for name, modes in thunks.items()
        for mode, fns in modes.items()
    }
    for name, modes in thunks.items():
        for mode, fns in modes.items():
            t_ms = torch_ms[(name, mode)]
            j_ms = median_ms(fns[1], args.repeats, jax.block_until_ready)
            print(f"{name:7s} {mode:10s} {t_ms:11.2f} {j_ms:9.2f} {t_ms / j_ms:12.2f}x")


if __name__ == "__main__":
    main()
