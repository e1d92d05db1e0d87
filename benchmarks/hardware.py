"""Hardware ceiling: what this machine's CPU can do, and which settings clsgen should use on it.

Measures matrix-product throughput (GFLOP/s) at the shapes of the embedded model (SmolLM2-135M:
hidden 576, MLP 1536) and at square sizes, in float32 and bfloat16, at 1 and 2 threads; a forward
pass of the embedded model in both dtypes with SDPA and eager attention and its model FLOPs
utilisation (MFU) against the measured matmul peak of the same dtype and threads; the forward at 1
and 2 threads under OpenMP's default and passive wait policies; and `torch.compile` on the forward.

Every measurement runs in a fresh process (OpenMP reads its settings at start-up) with the wait
policy `WAIT_POLICY`, which training.py uses too, so that its MFU divides by a peak measured
the same way. `peak_flops(dtype, threads)` returns that peak (FLOP/s); figures measured by `run`
are kept, so in one `run_all.py` process they are measured once.

    python benchmarks/hardware.py [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

from _path import HERE  # first: this checkout's clsgen on sys.path

# isort: split

from common import Section, interleaved, main, table  # noqa: E402

# (label, m, k, n): an (m x k) @ (k x n) product
SHAPES = [
    ("512 tok x 576 -> 1536 (MLP up)", 512, 576, 1536),
    ("2048 tok x 576 -> 1536 (MLP up)", 2048, 576, 1536),
    ("square 1024", 1024, 1024, 1024),
    ("square 2048", 2048, 2048, 2048),
]
QUICK_SHAPES = [SHAPES[0], SHAPES[2]]
DTYPES = ("float32", "bfloat16")
WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY") or "PASSIVE"
"""OpenMP wait policy of every measuring process here and in training.py: the caller's, else PASSIVE
(idle threads sleep instead of spinning; on a machine whose cores are shared, spinning 2-thread
processes ran several times slower than 1 thread; see the threads table)."""

_PEAKS: dict[tuple[str, int], float] = {}
"""(dtype, threads) -> best measured matmul FLOP/s (filled by `run` or `peak_flops`)."""


# ----------------------------------------------------------------------------- in the measuring process


def dtype_supported(dtype: str) -> bool:
    """Whether this CPU build multiplies matrices of `dtype` at all (bf16 may be missing elsewhere)."""
    import torch

    try:
        a = torch.ones(8, 8, dtype=getattr(torch, dtype))
        return bool(torch.isfinite((a @ a).float()).all())
    except (RuntimeError, TypeError, AttributeError):
        return False


def dtypes_here() -> list[str]:
    return [d for d in DTYPES if dtype_supported(d)]


def _matmul_once(m: int, k: int, n: int, dtype: str, threads: int, seconds: float) -> float:
    """FLOP/s of one timed burst of (m x k) @ (k x n) products lasting about `seconds`."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(m, k).to(getattr(torch, dtype))
    b = torch.randn(k, n).to(getattr(torch, dtype))
    a @ b  # warm: thread pool size, packing buffers
    t0 = time.perf_counter()
    a @ b
    reps = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2.0 * m * k * n * reps / (time.perf_counter() - t0)


def measure_matmul(shapes: list, dtypes: list[str], threads: list[int], repeats: int,
                   seconds: float) -> list[list[Any]]:
    """[label, dtype, threads, median FLOP/s] of each configuration, measured round-robin so that load
    from other processes falls on every configuration alike."""
    configs = [(s, d, t) for s in shapes for d in dtypes for t in threads]
    runs: dict[tuple[str, str, int], list[float]] = {(s[0], d, t): [] for s, d, t in configs}
    for _ in range(repeats):
        for (label, m, k, n), d, t in configs:
            runs[(label, d, t)].append(_matmul_once(m, k, n, d, t, seconds))
    return [[label, d, t, statistics.median(v)] for (label, d, t), v in runs.items()]


def _load(dtype: str, attn: str, layers: int | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from clsgen.backbones import embedded_checkpoint

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    kw = {"num_hidden_layers": layers} if layers else {}
    model = AutoModelForCausalLM.from_pretrained(str(embedded_checkpoint()), dtype=getattr(torch, dtype),
                                                 attn_implementation=attn, use_safetensors=True, **kw)
    return model.eval()


def _ids(batch: int, seq: int) -> Any:
    import torch

    torch.manual_seed(0)
    return torch.randint(100, 40000, (batch, seq))


def forward_times(dtypes: list[str], attns: list[str], batch: int, seq: int, repeats: int) -> dict[str, Any]:
    """{dtype: {attention: median forward seconds or {"error"}}}, the variants interleaved."""
    import torch

    ids = _ids(batch, seq)
    models, out = {}, {}
    for d in dtypes:
        for a in attns:
            try:
                models[f"{d}|{a}"] = _load(d, a)
            except Exception as e:  # noqa: BLE001 - an attention kind this transformers lacks
                out.setdefault(d, {})[a] = {"error": f"{type(e).__name__}: {e}"[:200]}

    def fwd(model: Any) -> Any:
        def f() -> None:
            with torch.inference_mode():
                model(input_ids=ids)
        return f

    for key, s in interleaved({k: fwd(m) for k, m in models.items()}, repeats=repeats, warmup=1).items():
        d, a = key.split("|")
        out.setdefault(d, {})[a] = {"seconds": s}
    return out


def compile_times(dtype: str, batch: int, seq: int, repeats: int, layers: int | None) -> dict[str, Any]:
    """Eager forward, the first compiled call (compilation) and compiled forwards, in seconds."""
    import torch

    model, ids = _load(dtype, "sdpa", layers), _ids(batch, seq)

    def timed(f: Any) -> float:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    out: dict[str, Any] = {}
    with torch.inference_mode():
        model(input_ids=ids)
        out["eager_s"] = timed(lambda: model(input_ids=ids))
        compiled = torch.compile(model, dynamic=False)
        t0 = time.perf_counter()
        compiled(input_ids=ids)
        out["compile_s"] = time.perf_counter() - t0
        out["compiled_s"] = timed(lambda: compiled(input_ids=ids))
        eager, comp = model(input_ids=ids).logits.float(), compiled(input_ids=ids).logits.float()
        out["max_abs_diff"] = float((eager - comp).abs().max())
    return out


# ----------------------------------------------------------------------------- from the parent


def _in_process(call: str, threads: int, timeout: float, env: dict[str, str | None] | None = None
                ) -> dict[str, Any]:
    """Evaluate `call` (an expression over this module's functions) in a fresh interpreter with
    `threads` threads and the wait policy WAIT_POLICY (`env` overrides; None removes a variable);
    its JSON result, or {"error": ...}."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent)!r}]
        import torch
        torch.set_num_threads({threads})
        import hardware
        print("RESULT " + json.dumps(hardware.{call}))
    """)
    full = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": WAIT_POLICY,
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                              env=full, cwd=str(HERE.parent), check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"TimeoutExpired: did not finish in {timeout:.0f} s"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        err = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        last = next((x for x in reversed(err) if "Error" in x or "error" in x), err[-1] if err else "no output")
        return {"error": f"exit {proc.returncode}: {last[:300]}"}
    return json.loads(lines[-1][len("RESULT "):])


def supported_dtypes() -> list[str]:
    """The dtypes this CPU build can multiply (asked in a subprocess: importing torch here is not needed)."""
    res = _in_process("dtypes_here()", 1, 120)
    return res if isinstance(res, list) else ["float32"]


def matmul_table(shapes: list, dtypes: list[str], threads: list[int], repeats: int, seconds: float,
                 timeout: float = 300) -> dict[tuple[str, str, int], float]:
    """{(shape label, dtype, threads): FLOP/s}; the best per (dtype, threads) becomes its peak."""
    res = _in_process(f"measure_matmul({shapes!r}, {dtypes!r}, {threads!r}, {repeats}, {seconds})",
                      max(threads), timeout)
    if isinstance(res, dict):
        raise RuntimeError(f"matmul measurement failed: {res['error']}")
    out = {(label, d, t): v for label, d, t, v in res}
    for (_, d, t), v in out.items():
        _PEAKS[(d, t)] = max(_PEAKS.get((d, t), 0.0), v)
    return out


def peak_flops(dtype: str, threads: int) -> float | None:
    """Best matmul FLOP/s at the model's shapes for `dtype` at `threads` under WAIT_POLICY, or None
    when the dtype is not supported. Measured (in about 15 s) unless `run` already did."""
    if (dtype, threads) not in _PEAKS:
        if dtype not in supported_dtypes():
            return None
        matmul_table(SHAPES[:3], [dtype], [threads], repeats=2, seconds=0.3)
    return _PEAKS.get((dtype, threads))


def model_dims() -> dict[str, int]:
    """Parameter counts of the embedded model: its decoder's linear layers and its (tied) LM head."""
    from transformers import AutoConfig

    from clsgen.backbones import embedded_checkpoint

    c = AutoConfig.from_pretrained(str(embedded_checkpoint()))
    h, heads = c.hidden_size, c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or h // heads
    per_layer = 2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * c.intermediate_size
    return {"body": c.num_hidden_layers * per_layer, "lm_head": c.vocab_size * h, "layers": c.num_hidden_layers,
            "q_dim": heads * head_dim}


def thread_counts() -> list[int]:
    cores = os.cpu_count() or 1
    return [1, 2] + ([cores] if cores > 2 else [])


# ----------------------------------------------------------------------------- the section


def run(quick: bool = False) -> Section:
    import torch

    threads_default = torch.get_num_threads()
    dtypes = supported_dtypes()
    skipped = [d for d in DTYPES if d not in dtypes]
    best = "bfloat16" if "bfloat16" in dtypes else "float32"
    shapes = QUICK_SHAPES if quick else SHAPES
    threads = thread_counts()
    repeats = 2 if quick else 3
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    mm = matmul_table(shapes, dtypes, threads, repeats=repeats, seconds=0.15 if quick else 0.3)
    seconds["matmul"] = time.perf_counter() - t0

    batch, seq = (1, 64) if quick else (2, 128)
    t0 = time.perf_counter()
    fwd = _in_process(f"forward_times({dtypes!r}, ['sdpa', 'eager'], {batch}, {seq}, {repeats - 1})",
                      threads_default, 600)
    seconds["forward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    thr = []
    for label, n, env in [("1 thread", 1, {}), ("2 threads, OpenMP default wait policy", 2, {"OMP_WAIT_POLICY": None}),
                          ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"})]:
        r = _in_process(f"forward_times([{best!r}], ['sdpa'], {batch}, {seq}, {repeats - 1})", n, 300, env)
        thr.append({"label": label, "threads": n, **(r.get(best, {}).get("sdpa", {}) if "error" not in r else r)})
    seconds["threads"] = time.perf_counter() - t0

    # quick: the same code path on the first 2 layers (a cold compile of all 30 takes minutes)
    layers = 2 if quick else None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clsgen-inductor-") as cache:
        comp = _in_process(f"compile_times({best!r}, {batch}, {seq}, 2, {layers})", threads_default,
                           120 if quick else 240, {"TORCHINDUCTOR_CACHE_DIR": cache})
    seconds["compile"] = time.perf_counter() - t0
    comp.update({"dtype": best, "layers": layers or "all", "batch": batch, "seq": seq, "threads": threads_default})

    dims = model_dims()
    flops = 2.0 * (dims["body"] + dims["lm_head"]) * batch * seq  # logits at every position
    attn_flops = 2.0 * dims["layers"] * batch * seq * seq * dims["q_dim"]  # QK^T + AV, causal half

    def mfu(s: float, d: str, t: int) -> tuple[float, float] | None:
        peak = _PEAKS.get((d, t))
        return (flops / s / peak, (flops + attn_flops) / s / peak) if peak else None

    figures: dict[str, Any] = {
        "threads_default": threads_default, "wait_policy": WAIT_POLICY, "dtypes_skipped": skipped,
        "matmul_gflops": {f"{label} | {d} | {t} threads": v / 1e9 for (label, d, t), v in mm.items()},
        "peak_gflops": {f"{d} | {t} threads": v / 1e9 for (d, t), v in sorted(_PEAKS.items())},
        "forward": fwd, "threads": thr, "compile": comp, "model_dims": dims, "seconds": seconds,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }

    md = [f"Every figure comes from a fresh process with `OMP_WAIT_POLICY={WAIT_POLICY}` (except where the "
          f"threads table says otherwise); torch's default here is {threads_default} threads.", "",
          f"Matrix products (GFLOP/s, median of {repeats} round-robin bursts):", ""]
    header = ["shape (m x k -> n)"] + [f"{d} {t}T" for d in dtypes for t in threads]
    rows = [[label] + [mm[(label, d, t)] / 1e9 for d in dtypes for t in threads] for label, *_ in shapes]
    rows.append(["**peak**"] + [_PEAKS[(d, t)] / 1e9 for d in dtypes for t in threads])
    md += [table(header, rows), ""]
    if skipped:
        md += [f"Skipped: {', '.join(skipped)} (matmul not supported by this CPU build).", ""]

    md += [f"Forward pass of the embedded SmolLM2-135M ({batch} x {seq} tokens, logits at every position, "
           f"{threads_default} threads, median of {repeats - 1} interleaved runs after a warm-up). MFU = 2 x "
           f"{(dims['body'] + dims['lm_head']) / 1e6:.1f} M linear-layer params (incl. the tied LM head) x tokens / s "
           "/ the peak matmul FLOP/s of the same dtype and threads; '+attn' also counts QK^T and AV.", ""]
    frows = []
    if "error" in fwd:
        frows.append(["-", "-", "-", "-", "-", fwd["error"]])
    for d, by_attn in ({} if "error" in fwd else fwd).items():
        for attn, r in by_attn.items():
            if "error" in r:
                frows.append([d, attn, "-", "-", "-", r["error"]])
                continue
            m = mfu(r["seconds"], d, threads_default)
            frows.append([d, attn, r["seconds"], batch * seq / r["seconds"],
                          f"{100 * m[0]:.0f}% / {100 * m[1]:.0f}%" if m else "-", ""])
    md += [table(["dtype", "attention", "seconds", "tokens/s", "MFU / +attn", "note"], frows), ""]

    md += [f"Threads: the {best} SDPA forward ({batch} x {seq}) in fresh processes:", ""]
    trows = []
    for r in thr:
        if "seconds" not in r:
            trows.append([r["label"], "-", "-", "-", r.get("error", "")])
            continue
        m = mfu(r["seconds"], best, r["threads"])
        trows.append([r["label"], r["seconds"], batch * seq / r["seconds"], f"{100 * m[0]:.0f}%" if m else "-", ""])
    md += [table(["setting", "seconds", "tokens/s", "MFU", "note"], trows), ""]

    if "error" in comp:
        md += [f"`torch.compile` (inductor, cold cache, {best}, {comp['layers']} layers): failed — {comp['error']}.",
               ""]
    else:
        speed = comp["eager_s"] / comp["compiled_s"]
        saving = comp["eager_s"] - comp["compiled_s"]
        pays = (f"it pays for itself after {comp['compile_s'] / saving:.0f} forwards of this shape" if saving > 0
                else "it never pays for itself")
        md += [f"`torch.compile` (inductor, cold cache, {best}, SDPA, {comp['layers']} layers, {batch} x {seq} tokens, "
               f"{threads_default} threads): first call {comp['compile_s']:.1f} s; forward {comp['eager_s']:.3f} s eager "
               f"vs {comp['compiled_s']:.3f} s compiled ({speed:.2f}x); largest logit difference "
               f"{comp['max_abs_diff']:.3g}; {pays} (a new shape compiles again unless dynamic).", ""]

    md += ["**What clsgen uses, from these numbers:**", ""]
    md += _conclusions(mm, fwd, thr, comp, dtypes, shapes[0][0], threads_default, quick)
    load = figures["load_average"]
    if load is not None:
        md += ["", f"Load average at the end: {load:.1f} on {os.cpu_count()} cores (other processes share this "
               "machine; multi-thread figures suffer most when a core is busy)."]
    return Section("Hardware ceiling", "\n".join(md), figures)


def _conclusions(mm: dict, fwd: dict, thr: list, comp: dict, dtypes: list[str], model_shape: str,
                 threads_default: int, quick: bool) -> list[str]:
    out = []
    t = threads_default if (model_shape, "float32", threads_default) in mm else 2
    if "bfloat16" in dtypes:
        mm_ratio = mm[(model_shape, "bfloat16", t)] / mm[(model_shape, "float32", t)]
        f_bf = fwd.get("bfloat16", {}).get("sdpa", {})
        f_32 = fwd.get("float32", {}).get("sdpa", {})
        fwd_ratio = f_32["seconds"] / f_bf["seconds"] if "seconds" in f_bf and "seconds" in f_32 else None
        ok = mm_ratio > 1.0 and (fwd_ratio is None or fwd_ratio > 1.0)
        out.append(f"- dtype: `model.dtype: auto` = bfloat16 on CPU. bf16 matmuls run {mm_ratio:.2f}x float32 at "
                   f"the model's shape ({t} threads)" + (f", the whole forward {fwd_ratio:.2f}x" if fwd_ratio else "")
                   + (": the default is justified (and it halves the weights' memory)." if ok else
                      ": NOT faster here, so set `model.dtype: float32` on this machine."))
    else:
        out.append("- dtype: bfloat16 is not supported here; clsgen's 'auto' picks bfloat16, so set "
                   "`model.dtype: float32` on this machine.")
    secs = [r.get("seconds") for r in thr]
    if all(secs):
        one, spin, passive = secs
        line = (f"- threads: clsgen leaves torch's default ({threads_default} = the cores, or `OMP_NUM_THREADS`). "
                f"2 threads run the forward {one / passive:.2f}x as fast as one with passive waiting and "
                f"{one / spin:.2f}x with OpenMP's default (spinning) wait")
        if min(one / passive, one / spin) >= 1.2:
            line += ": use all cores (the default)."
        else:
            line += (". Far from 2x: this machine's cores are shared (see the load average), and spinning threads "
                     "of different processes hold up each other. On a busy machine run clsgen with "
                     "`OMP_WAIT_POLICY=PASSIVE` or `OMP_NUM_THREADS=1`; on an idle one all cores should pay (this "
                     "run could not show it).")
        out.append(line)
    d = "bfloat16" if "bfloat16" in dtypes else "float32"
    by = fwd.get(d, {})
    if "seconds" in by.get("sdpa", {}) and "seconds" in by.get("eager", {}):
        r = by["eager"]["seconds"] / by["sdpa"]["seconds"]
        out.append(f"- attention: clsgen keeps transformers' default, SDPA; eager attention takes {r:.2f}x its time "
                   f"({d} forward)" + (
                       ": SDPA stays." if r >= 1.1 else
                       ", within this machine's noise: SDPA stays, since it never materialises (nor keeps for the "
                       "backward pass) the attention matrix, which counts at clsgen's 1024-token rows."
                       if r >= 0.85 else
                       ". Eager is faster at this short length, but SDPA never materialises the attention matrix, "
                       "which counts at clsgen's 1024-token rows: SDPA stays."))
    if "error" in comp:
        out.append(f"- torch.compile: not used by clsgen ({comp['error'].split(':')[0]} here).")
    else:
        speed = comp["eager_s"] / comp["compiled_s"]
        out.append(f"- torch.compile: not used by clsgen. A cold compile costs {comp['compile_s']:.0f} s"
                   + (" (2-layer model in quick mode)" if quick else "")
                   + f" for {speed:.2f}x per forward; training and generation see a new shape at almost every batch "
                   "(lengths vary), each a recompile, so it does not pay on the short CPU runs clsgen targets.")
    return out


if __name__ == "__main__":
    main(run)
