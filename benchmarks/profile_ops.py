"""Which ops one minibatch gradient spends its time on: a jax.profiler trace read per HLO op.

Times the trainer's minibatch gradient (``jax.grad(MAPPO.loss, has_aux=True)``, as ``MAPPO.learn``
takes it) on ``--minibatch`` rows of a rollout (median of ``--repeats`` calls), traces
``--repeats`` calls into ``OUT/trace`` and prints the tables of ``benchmarks/RESULTS.md`` in ms per
call. The trace's ``*.trace.json.gz`` has an event per executed thunk, with ``args.hlo_op`` (its
name in the optimized HLO, saved as ``OUT/grad.hlo.txt``) and ``args.run_id`` (the call). *Own*:
the event less the events nested in it on its thread; *wall*: each instant split evenly among
the ops running then. A ``while`` event ends before its iterations, so a loop's time is its body
ops'. The HLO gives an op's category, model and pass (``op_name``: ``jvp(NWRQKActor)/...``, and
``transpose(jvp(...))`` in the backward; ops without one take their nearest users'), source line
and FLOPs. ``OUT/ops.json`` holds every op's row.

    python benchmarks/profile_ops.py --config configs/quickstart.yaml --minibatch 512
    python benchmarks/profile_ops.py --config configs/strategic_marl_v1.yaml --minibatch 64
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import statistics
import tempfile
import time
from types import SimpleNamespace as NS

import jax
from profile_update import call_ms, median_ms, setup

from marl_jax.config import load_config

NAME = r"%([\w.\-]+)"
MOVEMENT = set(
    "parameter constant tuple get-tuple-element bitcast reshape copy transpose broadcast slice "
    "concatenate pad reverse iota dynamic-slice dynamic-update-slice".split()
)
PLAIN = {"dot": "dot (matmul)", "while": "while loop (own time)", "reduce-window": "reduce"}
PLAIN |= {op: "gather/scatter" for op in ("gather", "scatter")}
PLAIN |= {op: "transpose/copy (layout)" for op in ("copy", "transpose")}
PLAIN |= {op: op for op in ("convolution", "dynamic-update-slice", "dynamic-slice", "reduce")}


def attr(pattern: str, line: str, default=None):
    m = re.search(pattern, line)
    return m.group(1) if m else default


def parse_hlo(text: str) -> NS:
    """The optimized HLO: ``instrs`` by name, ``comps`` (each computation's instructions),
    ``sources`` (``file.py:line function`` of each stack frame id), ``caller`` of each computation
    and ``users`` of each instruction."""
    hlo = NS(instrs={}, comps={}, sources={}, caller={}, users=collections.defaultdict(list))
    tables, comp, section = collections.defaultdict(dict), None, None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
        elif section and line[:1].isdigit():
            key, _, val = line.partition(" ")
            fields = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", val)}
            tables[section][key] = val.strip('"') if section.endswith("Names") else fields
        elif m := re.match(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line):
            section, comp = None, m.group(1)
            hlo.comps[comp] = []
        elif (m := re.match(r"^\s+(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$", line)) and comp:
            section, rest = None, m.group(3)
            op = re.search(r"(?:^|[\s)])([\w\-]+)\((.*)", rest)  # after the shape, maybe a tuple
            args = re.split(r"\)(?:,\s*[\w\-]+=|\s*$)", op.group(2), maxsplit=1)[0]
            branches = attr(r"branch_computations=\{([^}]*)\}", line, "")
            ins = NS(name=m.group(2), computation=comp, line=line, is_root=bool(m.group(1)))
            ins.opcode, ins.shape = op.group(1), rest[: op.start(1)].strip()
            ins.operands = re.findall(NAME, args)
            ins.calls = re.findall(r"(?:calls|body|condition)=" + NAME, line)
            ins.calls += re.findall(NAME, branches)
            ins.trip_count = attr(r'"known_trip_count":\{"n":"(\d+)"', line)
            ins.fusion_kind = attr(r"kind=(k\w+)", line)
            ins.backend_kind = attr(r'"fusion_config":\{"kind":"([^"]+)"', line)
            ins.op_name = attr(r'op_name="([^"]*)"', line)
            ins.target = attr(r'custom_call_target="([^"]*)"', line)
            ins.frame = attr(r"metadata=\{[^}]*stack_frame_id=(\d+)", line)
            hlo.instrs[ins.name] = ins
            hlo.comps[comp].append(ins)
            for c in ins.calls:
                hlo.caller.setdefault(c, ins)
        else:
            section = None
    for ins in hlo.instrs.values():
        for o in ins.operands:
            hlo.users[o].append(ins.name)
    files, funcs, locs = (tables[k] for k in ("FileNames", "FunctionNames", "FileLocations"))
    for frame, fields in tables["StackFrames"].items():
        if loc := locs.get(str(fields.get("file_location_id"))):
            path = os.path.basename(files.get(str(loc.get("file_name_id")), "?"))
            function = funcs.get(str(loc.get("function_name_id")), "")
            hlo.sources[frame] = f"{path}:{loc.get('line')} {function}"
    return hlo


def fused(ins, hlo: NS) -> collections.Counter:
    """Opcodes inside a fusion, nested fusions included."""
    counts, stack = collections.Counter(), list(ins.calls)
    while stack:
        for sub in hlo.comps.get(stack.pop(), []):
            counts[sub.opcode] += 1
            stack.extend(sub.calls)
    return counts


def fusion_roots(ins, hlo: NS) -> set[str]:
    """Opcodes at the root of a fusion (through tuples and bitcasts)."""
    roots = set()
    for comp in ins.calls:
        body = {i.name: i for i in hlo.comps.get(comp, [])}
        todo = [i for i in body.values() if i.is_root]
        while todo:
            if (r := todo.pop()).opcode in ("tuple", "bitcast", "reshape"):
                todo.extend(body[o] for o in r.operands if o in body)
            else:
                roots.add(r.opcode)
    return roots


def is_fill(ins, hlo: NS) -> bool:
    """A broadcast of constants (``jnp.zeros`` and the like), plain or wrapped in a fusion."""
    if ins is None or ins.opcode == "constant":
        return ins is not None
    wrapped = set(fused(ins, hlo)) <= {"parameter", "constant", "broadcast", "bitcast"}
    fill = ins.opcode == "broadcast" or (ins.opcode == "fusion" and wrapped)
    return fill and all(is_fill(hlo.instrs.get(o), hlo) for o in ins.operands)


def categorize(ins, hlo: NS) -> str:
    if ins is None:
        return "unmapped thunk"
    op, inner = ins.opcode, fused(ins, hlo) if ins.opcode == "fusion" else collections.Counter()
    plain_copy = op == "copy" or (op == "fusion" and set(inner) <= {"parameter", "copy", "bitcast"})
    if plain_copy and all(is_fill(hlo.instrs.get(o), hlo) for o in ins.operands):
        return "copy of a zero fill (scan buffer init)"
    if op in ("broadcast", "fusion") and is_fill(ins, hlo):
        return "broadcast of a constant (zero fill)"
    if op != "fusion":
        return PLAIN.get(op, "concat/slice/pad/broadcast" if op in MOVEMENT else op)
    if found := [PLAIN[o] for o in ("dot", "convolution", "gather", "scatter") if o in inner]:
        return found[0]
    roots = fusion_roots(ins, hlo)
    if "dynamic-update-slice" in roots:
        return "dynamic-update-slice"
    if roots & {"reduce", "reduce-window"} or ins.fusion_kind == "kInput":
        return "reduce"
    if set(inner) <= MOVEMENT:
        if inner.keys() & {"transpose", "copy"}:
            return "transpose/copy (layout)"
        return "dynamic-slice" if "dynamic-slice" in inner else "concat/slice/pad/broadcast"
    return "elementwise fusion"


def describe(ins, hlo: NS) -> str:
    """A fusion's contents in short: ``kLoop: multiply x4, add x2, tanh``."""
    if ins.opcode != "fusion":
        return ins.opcode + (f" {ins.target}" if ins.target else "")
    skip = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
    inner = [(op, n) for op, n in fused(ins, hlo).most_common() if op not in skip]
    parts = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in inner[:5])
    return f"{(ins.backend_kind or ins.fusion_kind or '').strip('_')}: {parts}"


def dims(shape: str) -> list[int]:
    return [int(d) for d in attr(r"^\w+\[([\d,]*)\]", shape, "").split(",") if d]


def flops(ins, hlo: NS) -> float:
    """FLOPs (2 per multiply-add) of a dot or convolution, or of those fused into ``ins``."""
    if ins is None or ins.opcode not in ("dot", "convolution", "fusion"):
        return 0.0
    if ins.opcode == "fusion":
        return sum(flops(sub, hlo) for c in ins.calls for sub in hlo.comps.get(c, []))
    lhs, rhs = (dims(hlo.instrs[o].shape) for o in ins.operands[:2])
    if ins.opcode == "dot":
        contracted = attr(r"lhs_contracting_dims=\{([\d,]*)\}", ins.line, "").split(",")
        return 2.0 * math.prod(dims(ins.shape)) * math.prod(lhs[int(i)] for i in contracted if i)
    labels = attr(r"dim_labels=\w*_(\w+)->", ins.line)
    out_features = rhs[labels.index("o")] if labels else 1
    return 2.0 * math.prod(dims(ins.shape)) * math.prod(rhs) / max(out_features, 1)


def enclosing_while(ins, hlo: NS):
    """The innermost while loop whose body (or a computation it calls) holds ``ins``."""
    seen = set()
    while ins is not None and ins.computation not in seen:
        seen.add(ins.computation)
        if (ins := hlo.caller.get(ins.computation)) is not None and ins.opcode == "while":
            return ins
    return None


def op_row(op: str, hlo: NS, models: dict) -> dict:
    """An op's category, model, pass, enclosing loop, source line, shape, FLOPs, ..."""

    def model_of(name: str) -> str:
        return models.get(attr(r"jvp\((\w+)\)", name), "loss (outside the models)")

    def metadata_of(ins):
        """The instruction whose metadata stands for ``ins``, and whether it was inferred: itself;
        else its nearest users with metadata (None if they belong to several models); else its
        nearest operands with it; else the instruction calling its computation."""
        if ins is None or ins.op_name:
            return ins, False
        for step in (lambda n: hlo.users.get(n, []), lambda n: hlo.instrs[n].operands):
            seen, frontier = {ins.name}, [ins.name]
            for _ in range(4):
                frontier = [
                    m for n in frontier for m in step(n) if m in hlo.instrs and m not in seen
                ]
                seen.update(frontier)
                if found := [hlo.instrs[n] for n in frontier if hlo.instrs[n].op_name]:
                    one = len({model_of(f.op_name) for f in found}) == 1
                    return (found[0] if one else None), True
        parent = hlo.caller.get(ins.computation)
        return (metadata_of(parent)[0] if parent is not None else None), True

    ins = hlo.instrs.get(op)
    (meta, inferred), loop = metadata_of(ins), enclosing_while(ins, hlo)
    name = (meta.op_name or "") if meta is not None else ""
    shared = ins is not None and meta is None  # its users belong to several models
    return dict(
        op=op,
        category=categorize(ins, hlo),
        model="shared (XLA-made, several models)" if shared else model_of(name),
        backward="transpose(" in name,
        loop=loop.name if loop is not None else None,
        op_name=name,
        inferred=inferred,
        source=hlo.sources.get(meta.frame, "") if meta is not None else "",
        what=describe(ins, hlo) if ins is not None else "?",
        shape=ins.shape if ins is not None else "",
        flops=flops(ins, hlo),
    )


def read_trace(trace_dir: str, module: str):
    """``[(run_id, thread, start, duration, op)]`` (us) of ``module``'s thunks in the newest
    trace under ``trace_dir``, and that file."""
    paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    if not paths:
        raise SystemExit(f"no *.trace.json.gz under {trace_dir}/plugins/profile")
    with gzip.open(path := max(paths, key=os.path.getmtime), "rt") as f:
        events = [(e, e.get("args") or {}) for e in json.load(f).get("traceEvents", [])]
    events = [(e, a) for e, a in events if e.get("ph") == "X" and a.get("hlo_module") == module]
    return [
        (a.get("run_id"), e["tid"], e["ts"], e.get("dur", 0.0), a["hlo_op"])
        for e, a in events
        if "hlo_op" in a
    ], path


def per_call_times(events, whiles: set):
    """Per op and call ``[own us, duration us, executions, wall share us]``, and each call's busy
    time (at least one op running; the loops' events, which enclose their bodies', left out)."""
    acc = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0.0, 0, 0.0]))
    by_tid, by_run, busy = collections.defaultdict(list), collections.defaultdict(list), {}
    for run, tid, ts, dur, op in events:
        by_tid[tid].append((ts, -dur, run, op))
        by_run[run] += [] if op in whiles else [(ts, 1, op), (ts + dur, -1, op)]
    for evs in by_tid.values():
        stack = []  # [end, accumulator] of the enclosing events
        for ts, neg_dur, run, op in sorted(evs, key=lambda e: e[:2]):
            while stack and stack[-1][0] <= ts + 1e-3:
                stack.pop()
            if stack:
                stack[-1][1][0] += neg_dur
            a = acc[op][run]
            a[0], a[1], a[2] = a[0] - neg_dur, a[1] - neg_dur, a[2] + 1
            stack.append([ts - neg_dur, a])
    for run, edges in by_run.items():
        edges.sort(key=lambda e: e[:2])
        active, last, busy[run] = collections.Counter(), edges[0][0], 0.0
        for t, kind, op in edges:
            if (n := sum(active.values())) and t > last:
                for a, k in active.items():
                    acc[a][run][3] += (t - last) * k / n
                busy[run] += t - last
            last, active[op] = t, active[op] + kind
            if active[op] <= 0:
                del active[op]
    return acc, busy


def measure(cfg, rows: int, repeats: int, out: str):
    """Compiles and times the minibatch gradient and traces ``repeats`` calls into ``OUT/trace``;
    returns the optimized HLO's text, the algorithm and the timings."""
    s = setup(cfg, rows, -(-rows // cfg.training.num_envs))  # enough steps for ``rows`` rows

    def minibatch_grad(params, constants, batch, env_params, hp):  # as MAPPO.learn's
        return jax.grad(s.algo.loss, has_aux=True)(params, constants, batch, env_params, hp)

    inputs = (s.state.params, s.state.constants, s.minibatch, s.env_params, s.state.hparams)
    started = time.perf_counter()
    grad = jax.jit(minibatch_grad).lower(*inputs).compile()
    compile_s = time.perf_counter() - started
    loss = jax.jit(s.algo.loss).lower(*inputs).compile()
    timing = dict(compile_s=compile_s, load_before=os.getloadavg())
    timing |= dict(grad_ms=median_ms(repeats, grad, *inputs, warmup=2))
    timing |= dict(loss_ms=median_ms(repeats, loss, *inputs, warmup=2))
    with jax.profiler.trace(os.path.join(out, "trace")):
        timing["traced_ms"] = median_ms(repeats, grad, *inputs, warmup=0)
    timing["grad_after_ms"] = median_ms(repeats, grad, *inputs, warmup=2)
    a = jax.numpy.ones((1024, 1024), jax.numpy.float32)  # the machine's matmul rate, best of 5
    matmul = jax.jit(lambda x: x @ x).lower(a).compile()
    call_ms(matmul, a)
    best_s = min(call_ms(matmul, a) for _ in range(5)) / 1e3
    timing |= dict(ref_gflops=2 * 1024**3 / best_s / 1e9, load_after=os.getloadavg())
    return grad.as_text(), s.algo, timing


def md_table(header: str, rows: list[list]) -> str:
    """A markdown table; ``header`` is the column names joined by ``|``."""
    lines = [f"| {header.replace('|', ' | ')} |", "|" + "---|" * len(header.split("|"))]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def report(args, rows: int, hlo_text: str, algo, timing: dict, out: str) -> None:
    module = attr(r"HloModule ([\w.\-]+)", hlo_text)
    events, trace_path = read_trace(os.path.join(out, "trace"), module)
    hlo = parse_hlo(hlo_text)
    if not (runs := sorted({e[0] for e in events})):
        raise SystemExit(f"the trace {trace_path} holds no events of {module}")
    acc, busy = per_call_times(events, {n for n, i in hlo.instrs.items() if i.opcode == "while"})
    per_op = {  # the medians over the calls of each op's own us, duration, count, wall share
        op: [statistics.median(calls.get(r, [0.0, 0.0, 0, 0.0])[k] for r in runs) for k in range(4)]
        for op, calls in acc.items()
    }
    models = {type(m).__name__: name for name, m in algo.modules.items()}
    info = {op: op_row(op, hlo, models) for op in per_op}
    total_us, total_share = (sum(v[k] for v in per_op.values()) for k in (0, 3))
    spans = {r: [min(e[2] for e in events if e[0] == r), 0] for r in runs}
    for run, _tid, ts, dur, _op in events:
        spans[run][1] = max(spans[run][1], ts + dur)

    def ms(us: float) -> str:
        return f"{us / 1e3:.2f}"

    def pct(us: float, total: float = total_us) -> str:
        return f"{100 * us / max(total, 1e-9):.1f}%"

    def one(values) -> str:
        return f"{statistics.median(values) / 1e3:.1f}"

    def three(values) -> str:
        return " / ".join(
            f"{v / 1e3:.1f}" for v in (min(values), statistics.median(values), max(values))
        )

    def category(i: dict) -> tuple:
        return (i["category"],)

    def pass_of(i: dict) -> str:
        return "backward" if i["backward"] else "forward"

    def group(key, where=lambda i: True) -> dict:
        """``{key(op's row): [own, count, ops, wall share, FLOPs]}``, summed over the ops."""
        groups = collections.defaultdict(lambda: [0.0, 0, 0, 0.0, 0.0])
        for op, (own, _dur, n, share) in per_op.items():
            if where(i := info[op]):
                g = groups[key(i)]
                g[:] = g[0] + own, g[1] + n, g[2] + 1, g[3] + share, g[4] + i["flops"] * n
        return groups

    def grouped(first: str, key, where=lambda i: True) -> str:
        """A table of the ops grouped by ``key`` (a tuple), the costliest first, and a total."""
        items = sorted(group(key, where).items(), key=lambda kv: -kv[1][0])
        if items:
            blank = [""] * (len(items[0][0]) - 1)
            items.append((("**total**", *blank), [sum(v[k] for _, v in items) for k in range(5)]))
        cols = "own ms/call|% of own|wall ms/call|% of wall|count/call|distinct ops"
        rows = []
        for k, (own, n, distinct, share, _flops) in items:
            rows.append(
                [*k, ms(own), pct(own), ms(share), pct(share, total_share), f"{n:.0f}", distinct]
            )
        return md_table(f"{first}|{cols}", rows)

    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}; {args.config} "
        f"{' '.join(args.set)}; minibatch {rows} rows; {len(runs)} traced calls (per-op figures: "
        f"median over the calls)\ntrace: {trace_path} ({len(events)} hlo-op events of {module}, "
        f"{len({e[1] for e in events})} threads)\noptimized HLO: {out}/grad.hlo.txt\n"
    )
    t = {k: f"{v:.1f}" for k, v in timing.items() if isinstance(v, float)}
    loads = ("/".join(f"{v:.2f}" for v in timing[k]) for k in ("load_before", "load_after"))
    own_per_call = [sum(c[r][0] for c in acc.values() if r in c) for r in runs]
    grad, share = f"{t['grad_ms']} / {t['grad_after_ms']}", f"{total_share / 1e3:.1f}"
    idle = one([spans[r][1] - spans[r][0] - busy[r] for r in runs])
    totals = [
        ("gradient, wall (median, untraced; before / after the trace)", grad),
        ("loss forward alone, wall (median, untraced)", t["loss_ms"]),
        ("gradient, wall under the profiler (median)", t["traced_ms"]),
        ("first to last thunk of a traced call (median)", one([b - a for a, b in spans.values()])),
        ("thunks' own (thread) time summed (median per op; 100% of own)", f"{total_us / 1e3:.1f}"),
        ("... their wall-clock shares summed (the busy time; 100% of wall)", share),
        ("busy time per call (min / median / max)", three(list(busy.values()))),
        ("idle between thunks (first-to-last span less busy time, median)", idle),
        ("thunks' own time summed, per call (min / median / max)", three(own_per_call)),
        ("compile of the gradient, s", t["compile_s"]),
        ("reference: a 1024^3 float32 matmul (best of 5), GFLOP/s", f"{timing['ref_gflops']:.0f}"),
        ("load average (1/5/15 min) before / after", " / ".join(loads)),
    ]
    print(md_table("measure|ms per gradient call", totals))
    print("\nBy category:\n\n" + grouped("category", category))
    print("\nBy model and pass (forward = jvp, backward = transpose(jvp)):\n")
    print(grouped("model|pass", lambda i: (i["model"], pass_of(i))))
    for label, back in (("forward", False), ("backward", True)):
        print(f"\nInside the {label} scans' loop bodies (all models), by category:\n")
        print(
            grouped("category", category, lambda i, b=back: bool(i["loop"]) and i["backward"] == b)
        )

    loops = collections.defaultdict(lambda: [0.0, 0])  # a loop's own us + its body ops', count
    for op, (own, _dur, n, _share) in per_op.items():
        if (ins := hlo.instrs.get(op)) is not None and ins.opcode == "while":
            loops[op][0] += own
        while (ins := enclosing_while(ins, hlo)) is not None:
            loops[ins.name][0] += own
            loops[ins.name][1] += n
    wrows = []
    for op, (us, body_n) in sorted(loops.items(), key=lambda kv: -kv[1][0]):
        i, trips = info.get(op) or op_row(op, hlo, models), hlo.instrs[op].trip_count
        iterations = (per_op.get(op, [0, 0, 0])[2] or 1) * int(trips or 1)  # per call
        per_iteration = [f"{us / iterations:.1f}", f"{body_n / iterations:.0f}"]
        cells = [i["model"], pass_of(i), trips or "?", ms(us), pct(us), *per_iteration]
        wrows.append([f"`{op}`", *cells])
    print("\nThe while loops (the recurrent scans; time = the loop's own + its body's ops):\n")
    print(md_table("while|model|pass|trips|ms/call|% of own|us/iteration|thunks/iteration", wrows))

    def dot_row(key, us, n, fl, per_exec=True) -> list:
        count, rate = "" if n is None else f"{n:.0f}", f"{fl / max(us, 1e-9) / 1e3:.0f}"
        exec_us = f"{us / max(n, 1):.1f}" if per_exec else ""
        return [*key, count, ms(us), pct(us), f"{fl / 1e9:.3f}", rate, exec_us]

    def dot_key(i: dict) -> tuple:
        where = "scan body" if i["loop"] else ""
        return i["model"], pass_of(i), where, i["source"], i["shape"].split("{")[0]

    dots = group(dot_key, lambda i: i["flops"] > 0)
    ranked = sorted(dots.items(), key=lambda kv: -kv[1][0])
    drows = [dot_row(k, v[0], v[1], v[4]) for k, v in ranked[: args.top + 5]]
    if rest := [v for _, v in ranked[args.top + 5 :]]:
        sums = [sum(v[k] for v in rest) for k in (0, 1, 4)]
        drows.append(dot_row(("(the other rows)", "", "", "", ""), *sums, per_exec=False))
    sums = [sum(v[0] for v in dots.values()), None, sum(v[4] for v in dots.values())]
    drows.append(dot_row(("**all dots and convolutions**", *[""] * 4), *sums, per_exec=False))
    print("\nDots and convolutions by source line, pass and output shape (GFLOP/s: achieved):\n")
    cols = "model|pass|where|source|output shape|count/call|ms/call|% of own|GFLOP/call|GFLOP/s"
    print(md_table(f"{cols}|us/exec", drows))

    ranked = sorted(per_op.items(), key=lambda kv: -kv[1][0])
    trows = []
    for op, (own, _dur, n, _share) in ranked[: args.top]:
        i, path = info[op], re.sub(r"^jit\([^)]*\)/", "", info[op]["op_name"])
        via = f"`{path[-80:]}`{' (inferred)' if i['inferred'] else ''} {i['source']}"
        kind = [i["category"], i["model"], "bwd" if i["backward"] else "fwd"]
        cells = [*kind, "scan" if i["loop"] else "", ms(own), pct(own), f"{n:.0f}"]
        cells += [f"{own / max(n, 1):.1f}", f"`{i['shape'][:40]}`", i["what"][:60], via]
        trows.append([f"`{op}`", *cells])
    print(f"\nTop {args.top} ops by own time:\n")
    cols = "op|category|model|pass|loop|ms/call|% of own|count/call|us/exec|shape|what"
    print(md_table(f"{cols}|from (op_name tail, source line)", trows))

    ops = [
        {**info[op], "own_ms_per_call": v[0] / 1e3, "incl_ms_per_call": v[1] / 1e3}
        | {"count_per_call": v[2], "wall_share_ms_per_call": v[3] / 1e3}
        for op, v in ranked
    ]
    dump = {"config": args.config, "set": args.set, "minibatch": rows, "calls": len(runs)}
    dump |= {"timing_ms": timing, "ops_ms_per_call": total_us / 1e3, "ops": ops}
    with open(os.path.join(out, "ops.json"), "w") as f:
        json.dump(dump, f, indent=1)
    print(f"\nevery op: {out}/ops.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--minibatch", type=int, help="rows (default: the config's minibatch size)")
    default_out = os.path.join(tempfile.gettempdir(), "marl_jax_profile_ops")
    ap.add_argument("--out", default=default_out, help="folder for the trace, HLO and ops.json")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls, then traced calls")
    ap.add_argument("--top", type=int, default=15, help="individual ops to list")
    args = ap.parse_args()
    os.makedirs(out := os.path.abspath(args.out), exist_ok=True)
    cfg = load_config(args.config, args.set)
    rows = args.minibatch or cfg.training.minibatch_size
    hlo_text, algo, timing = measure(cfg, rows, args.repeats, out)
    with open(os.path.join(out, "grad.hlo.txt"), "w") as f:
        f.write(hlo_text)
    report(args, rows, hlo_text, algo, timing, out)


if __name__ == "__main__":
    main()
