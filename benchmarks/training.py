"""Training throughput: clsgen's loop against Hugging Face `Trainer` + PEFT LoRA doing the same LM work.

Both sides train the embedded SmolLM2-135M with the same LoRA (clsgen's defaults: rank, alpha,
dropout, all linear layers), in the same dtype and thread count, on the same PubMedQA training
examples with their real rationale (`LONG_ANSWER` + the verdict line) as the explanation target,
tokenized once by clsgen, prompt tokens masked with -100, with the same batch size, max length and
number of optimizer steps (one epoch over the examples). clsgen adds its classification head
(BCE); the HF side is the standard stack a user would write: `Trainer` with
`DataCollatorForSeq2Seq` (dynamic padding to the longest row, labels padded with -100), its default
random sampler, its default optimizer, logits at every position.

Each side runs in its own process (clean peak RSS), alternately, `rounds` times; a process trains
`warmup + measured` steps and only the measured steps are timed (clsgen: its loop's own step
timer, collation included; HF: `on_step_begin` -> `on_step_end`). Tokens are real (non-pad) tokens
through the forward pass, prompt and explanation, counted the same way on both sides.

    python benchmarks/training.py [--quick]
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _path import HERE  # first: this checkout's clsgen on sys.path

# isort: split

from hardware import WAIT_POLICY  # noqa: E402  (both sides run under it; see hardware.py)

from common import Section, Target, data_dir, main, table  # noqa: E402

SIZES = {
    # batch size, max length, prompt cap, steps per process (the first is warm-up), rounds; hf_grouped also
    # trains HF with group_by_length (off: its sampler sorts within min(n / (4 x batch), 50) batches, so on
    # the few examples timed here it groups nothing; the padding table shows its effect on a whole epoch)
    False: {"batch_size": 4, "max_length": 320, "max_prompt_tokens": 256, "warmup": 1, "measured": 3, "rounds": 2,
            "hf_grouped": False},
    True: {"batch_size": 2, "max_length": 256, "max_prompt_tokens": 192, "warmup": 1, "measured": 2, "rounds": 1,
           "hf_grouped": False},
}
TOP_LAYERS = (10, 6, 4)
TOP_LAYERS_QUICK = (6,)
"""K of the `lora.top_layers` rows (LoRA in the top K of the model's 30 layers, the rest a cached trunk)."""
PADDING_CONFIGS = [(4, 320, 256), (4, 1024, None), (8, 1024, None)]
"""(batch size, max length, prompt cap) of the whole-epoch padding table (None: the task's, 768)."""
PADDING_SEEDS = 5
CHILD_TIMEOUT = 900


# ----------------------------------------------------------------------------- shared by both sides


def _config(spec: dict[str, Any]) -> Any:
    from clsgen.config import (
        Config,
        DataConfig,
        LoraConfig,
        ModelConfig,
        TaskConfig,
        TrainConfig,
    )

    steps = spec["warmup"] + spec["measured"]
    return Config(
        model=ModelConfig(name="smollm2-135m", dtype=spec["dtype"]),
        data=DataConfig(dataset="pubmedqa", data_dir=spec["data_dir"]),
        lora=LoraConfig(top_layers=spec.get("top_layers")),
        task=TaskConfig(max_prompt_tokens=spec["max_prompt_tokens"]),
        train=TrainConfig(batch_size=spec["batch_size"], max_length=spec["max_length"], max_steps=steps,
                          epochs=1.0, warmup_ratio=0.0, log_every=1, save_every=10**6, seed=0,
                          cache_dir=spec.get("cache_dir")),
    )


def _examples(spec: dict[str, Any]) -> list[Any]:
    from clsgen.training_data import load_training_examples

    lines = Path(spec["examples"]).read_text(encoding="utf-8").splitlines()
    return load_training_examples([json.loads(x) for x in lines if x.strip()])


def _encoded(spec: dict[str, Any], tokenizer: Any) -> list[Any]:
    """The examples as clsgen encodes them for training (prompt + explanation + verdict line)."""
    from clsgen.collate import encode_example, training_task
    from clsgen.datasets import task_from_config

    cfg = _config(spec)
    task = training_task(task_from_config(cfg), tokenizer, cfg.train.max_length)
    return [encode_example(task, tokenizer, ex.fields, ex.label, ex.explanation, cfg.train.max_length)
            for ex in _examples(spec)]


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


# ----------------------------------------------------------------------------- the two sides (children)


def _child_clsgen(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from clsgen.train import train

    torch.set_num_threads(spec["threads"])
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-clsgen-") as out:
        result = train(_config(spec), _examples(spec), None, Path(out) / "model", progress=False,
                       on_step=lambda step, rec: records.append(rec))
    s = result.summary
    steps = [{"seconds": r["seconds_per_step"], "tokens": round(r["tokens_per_s"] * r["seconds_per_step"]),
              "lm_loss": r.get("lm_loss")} for r in records]
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad) if result.model else None
    return {"steps": steps, "real_tokens": s["tokens"],
            "padded_tokens": round(s["tokens"] / s["padding_efficiency"]) if s["padding_efficiency"] else None,
            "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(), "trainable_params": trainable,
            "trunk_cache": s.get("trunk_cache")}


def _child_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import inspect

    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from clsgen.backbones import embedded_checkpoint, prepare_tokenizer, resolve_dtype
    from clsgen.collate import IGNORE_INDEX

    hf_logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    cfg = _config(spec)
    path = str(embedded_checkpoint())
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e),
             "labels": [IGNORE_INDEX] * e.prompt_len + e.input_ids[e.prompt_len:]}
            for e in _encoded(spec, tokenizer)]
    torch.manual_seed(cfg.train.seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(cfg.model.dtype), use_safetensors=True)
    lora = cfg.lora
    model = get_peft_model(model, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="CAUSAL_LM"))

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.losses: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    counts: list[tuple[int, int, int]] = []  # per micro-batch: real tokens, padded tokens, target tokens

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, *args, **kw):
            mask = inputs["attention_mask"]
            counts.append((int(mask.sum()), mask.numel(), int((inputs["labels"] != IGNORE_INDEX).sum())))
            return super().training_step(model, inputs, *args, **kw)

    params = inspect.signature(TrainingArguments).parameters
    grouped = spec["side"] == "hf_grouped"
    sampling = ({"train_sampling_strategy": "group_by_length" if grouped else "random"}
                if "train_sampling_strategy" in params else {"group_by_length": grouped})
    tc = cfg.train
    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=tc.batch_size, max_steps=tc.max_steps,
            learning_rate=tc.lr, lr_scheduler_type=tc.schedule, warmup_steps=0, weight_decay=tc.weight_decay,
            max_grad_norm=tc.max_grad_norm, logging_steps=1, save_strategy="no", report_to="none",
            use_cpu=True, dataloader_num_workers=0, seed=tc.seed, disable_tqdm=True, remove_unused_columns=False,
            **sampling)
        trainer = CountingTrainer(model=model, args=args, train_dataset=rows, callbacks=[timer],
                                  data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True,
                                                                       label_pad_token_id=IGNORE_INDEX))
        trainer.train()
    steps = [{"seconds": s, "tokens": c[0], "lm_loss": loss}
             for s, c, loss in zip(timer.seconds, counts, timer.losses + [None] * len(timer.seconds))]
    return {"steps": steps, "real_tokens": sum(c[0] for c in counts), "padded_tokens": sum(c[1] for c in counts),
            "target_tokens": sum(c[2] for c in counts), "peak_rss_mb": _peak_rss_mb(),
            "threads": torch.get_num_threads(), "optimizer": args.optim if isinstance(args.optim, str)
            else getattr(args.optim, "value", str(args.optim)),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _child(spec_file: str, out_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    fn = _child_clsgen if spec["side"] == "clsgen" else _child_hf
    Path(out_file).write_text(json.dumps(fn(spec)))


# ----------------------------------------------------------------------------- the parent


def _spawn(spec: dict[str, Any], tmp: Path, name: str) -> dict[str, Any]:
    spec_file, out_file = tmp / f"{name}.spec.json", tmp / f"{name}.out.json"
    spec_file.write_text(json.dumps(spec))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": WAIT_POLICY,
           "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_file),
                               str(out_file)], capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT,
                              cwd=str(HERE.parent), check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"TimeoutExpired after {CHILD_TIMEOUT} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out_file.is_file():
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        return {"error": f"exit {proc.returncode}: {lines[-1][:300] if lines else 'no output'}"}
    res = json.loads(out_file.read_text())
    res["process_wall_s"] = wall
    return res


def _side_spec(side: str, tmp: Path) -> dict[str, Any]:
    """'clsgen-topK': clsgen with LoRA in the top K layers over a trunk cache (one per K, built by
    the first round's process and reused by the next)."""
    if not side.startswith("clsgen-top"):
        return {"side": side}
    k = int(side.removeprefix("clsgen-top"))
    return {"side": "clsgen", "top_layers": k, "cache_dir": str(tmp / f"trunk-cache-{k}")}


def _rates(res: dict[str, Any], warmup: int) -> list[float]:
    """tokens/s of each measured step."""
    return [s["tokens"] / s["seconds"] for s in res["steps"][warmup:] if s["seconds"] > 0]


def run(quick: bool = False) -> Section:
    import hardware
    import torch

    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset

    sz = SIZES[quick]
    threads = torch.get_num_threads()
    from clsgen.backbones import native_bfloat16

    # what `model.dtype: auto` trains in: bfloat16 only where the hardware has it natively
    dtype = "auto"
    dtype_used = "bfloat16" if native_bfloat16() else "float32"
    steps = sz["warmup"] + sz["measured"]
    n = steps * sz["batch_size"]  # one epoch: both sides see every example exactly once

    ds = load_dataset(DataConfig(dataset="pubmedqa", data_dir=data_dir()))
    pool = [ex for ex in ds.train if (ex.meta.get("long_answer") or "").strip()]
    chosen = random.Random(0).sample(pool, n)
    records = [{"id": ex.id, "label": ex.label, "fields": ex.fields, "explanation": ex.meta["long_answer"]}
               for ex in chosen]

    sides = ["clsgen", "hf"] + [f"clsgen-top{k}" for k in (TOP_LAYERS_QUICK if quick else TOP_LAYERS)]
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in [*sides, "hf_grouped"]}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        base = {**sz, "threads": threads, "dtype": dtype, "data_dir": data_dir(),
                "examples": str(tmp / "examples.jsonl")}
        for r in range(sz["rounds"]):
            order = sides if r % 2 == 0 else sides[::-1]
            if sz["hf_grouped"] and r == 0:
                order = order + ["hf_grouped"]
            for side in order:
                print(f"  training round {r + 1}/{sz['rounds']}: {side}", file=sys.stderr, flush=True)
                results[side].append(_spawn({**base, **_side_spec(side, tmp)}, tmp, f"{side}-{r}"))
        # the token counts of the data, for the FLOP count and padding figures
        from clsgen.backbones import load_tokenizer

        spec = {**base, "side": "count"}
        tokenizer = load_tokenizer()
        enc = _encoded(spec, tokenizer)
        padding = padding_table(ds, tokenizer, [PADDING_CONFIGS[0]] if quick else PADDING_CONFIGS)
    real_all = sum(len(e) for e in enc)
    target_all = sum(e.target_len for e in enc)
    peak = hardware.peak_flops(dtype_used, threads)
    return _section(sz, quick, threads, dtype_used, results, real_all, target_all, peak, enc, padding)


def padding_table(ds: Any, tokenizer: Any, configs: list[tuple[int, int, int | None]]) -> list[dict[str, Any]]:
    """Padding efficiency (real / padded tokens) of one epoch over the whole PubMedQA training split
    (prompt + LONG_ANSWER target), batched by clsgen's plan, by HF's default random sampler and by HF's
    `group_by_length` sampler; mean over PADDING_SEEDS epochs."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from clsgen.collate import encode_example, plan_epoch, training_task

    examples = [ex for ex in ds.train if (ex.meta.get("long_answer") or "").strip()]
    out = []
    for batch, max_length, cap in configs:
        task = training_task(ds.task.with_overrides(max_prompt_tokens=cap) if cap else ds.task, tokenizer, max_length)
        lengths = [len(encode_example(task, tokenizer, ex.fields, ex.label, ex.meta["long_answer"], max_length))
                   for ex in examples]

        def eff(batches: list[list[int]], lengths: list[int] = lengths) -> float:
            return sum(lengths[i] for b in batches for i in b) / sum(len(b) * max(lengths[i] for i in b)
                                                                     for b in batches)

        def chunks(order: list[int], batch: int = batch) -> list[list[int]]:
            return [order[i: i + batch] for i in range(0, len(order), batch)]

        res: dict[str, list[float]] = {"clsgen": [], "hf": [], "hf_grouped": []}
        for seed in range(PADDING_SEEDS):
            plan = plan_epoch(lengths, batch, 1, 1, seed, 0, True)
            res["clsgen"].append(eff([list(step.micro[0][0].indices) for step in plan]))
            g = torch.Generator().manual_seed(seed)
            res["hf"].append(eff(chunks(torch.randperm(len(lengths), generator=g).tolist())))
            g = torch.Generator().manual_seed(seed)
            res["hf_grouped"].append(eff(chunks(list(get_length_grouped_indices(lengths, batch, generator=g)))))
        out.append({"batch_size": batch, "max_length": max_length, "max_prompt_tokens": cap or ds.task.max_prompt_tokens,
                    "examples": len(lengths), "mean_length": statistics.mean(lengths),
                    **{k: statistics.mean(v) for k, v in res.items()}})
    return out


def _section(sz: dict[str, Any], quick: bool, threads: int, dtype: str, results: dict[str, list[dict[str, Any]]],
             real_all: int, target_all: int, peak: float | None, enc: list[Any],
             padding: list[dict[str, Any]]) -> Section:
    import hardware

    dims = hardware.model_dims()
    figures: dict[str, Any] = {"sizes": sz, "threads": threads, "dtype": dtype, "examples": len(enc),
                               "real_tokens_epoch": real_all, "target_tokens_epoch": target_all,
                               "peak_gflops": peak / 1e9 if peak else None, "runs": results}
    errors = [f"{side}: {r['error']}" for side, rs in results.items() for r in rs if "error" in r]
    ok = {side: [r for r in rs if "error" not in r] for side, rs in results.items()}
    lora_params = next((r["trainable_params"] for r in ok["hf"] if r.get("trainable_params")), 0)
    # FLOPs per real token: frozen base linears 4x (forward 2 + input gradients 2; no weight gradients),
    # LoRA 6x (forward, input and weight gradients), LM head 4x only at explanation tokens (the loss
    # needs no other logits); attention products not counted
    flops_tok = 4 * dims["body"] + 6 * lora_params + 4 * dims["lm_head"] * target_all / max(real_all, 1)
    # causal attention, forward (QK^T + AV: 2 n^2 q_dim per row and layer) and backward (twice that)
    attn_tok = 6 * dims["layers"] * dims["q_dim"] * sum(len(e) ** 2 for e in enc) / max(real_all, 1)
    figures["flops_per_token"] = flops_tok
    figures["attention_flops_per_token"] = attn_tok
    figures["padding_epoch"] = padding

    summary: dict[str, dict[str, Any]] = {}
    for side, rs in ok.items():
        if not rs:
            continue
        rates = [x for r in rs for x in _rates(r, sz["warmup"])]
        tps = statistics.median(rates) if rates else float("nan")
        losses = [s["lm_loss"] for r in rs for s in r["steps"] if s.get("lm_loss") is not None]
        first = rs[0]
        summary[side] = {
            "tokens_per_s": tps, "rates": rates,
            "padding_efficiency": first["real_tokens"] / first["padded_tokens"] if first.get("padded_tokens") else None,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs if r.get("peak_rss_mb")) if any(
                r.get("peak_rss_mb") for r in rs) else None,
            "mfu": tps * flops_tok / peak if peak else None,
            "seconds_per_step": statistics.median(s["seconds"] for r in rs for s in r["steps"][sz["warmup"]:]),
            "lm_loss_mean": statistics.mean(losses) if losses else None,
            "process_wall_s": statistics.median(r["process_wall_s"] for r in rs),
            "real_tokens": first["real_tokens"], "padded_tokens": first.get("padded_tokens"),
            "target_tokens": first.get("target_tokens"),
        }
    figures["summary"] = summary

    label = {"clsgen": "clsgen (LoRA + head, BCE + CE)", "hf": "HF Trainer + PEFT (random sampler, default)",
             "hf_grouped": "HF Trainer + PEFT (group_by_length)"}
    md = [f"The embedded SmolLM2-135M, {dtype}, {threads} threads (`OMP_WAIT_POLICY={WAIT_POLICY}` on both sides), "
          f"LoRA r={_lora_desc()}; "
          f"{len(enc)} PubMedQA training examples with their `LONG_ANSWER` as the explanation target "
          f"({real_all} tokens, {target_all} of them explanation + verdict), batch {sz['batch_size']}, max length "
          f"{sz['max_length']} (prompts capped at {sz['max_prompt_tokens']}), one epoch = {sz['warmup'] + sz['measured']} "
          f"optimizer steps per process, the first a warm-up; tokens/s = median over the {sz['measured']} measured "
          f"steps of {sz['rounds']} alternating process(es) per side.", ""]
    rows = []
    for side in ("clsgen", "hf", "hf_grouped"):
        if side not in summary:
            continue
        s = summary[side]
        rows.append([label[side], s["tokens_per_s"], s["seconds_per_step"],
                     f"{s['padding_efficiency']:.3f}" if s["padding_efficiency"] else "-",
                     f"{s['peak_rss_mb']:.0f}" if s["peak_rss_mb"] else "-",
                     f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "-",
                     f"{s['lm_loss_mean']:.3f}" if s["lm_loss_mean"] is not None else "-"])
    md += [table(["side", "tokens/s", "s/step", "padding eff.", "peak RSS MB", "MFU", "mean LM loss"], rows), ""]
    md += _top_layers_md(summary, ok)
    md += [f"Tokens = real (non-pad) tokens through the forward pass, prompt + explanation, on both sides. MFU = "
           f"tokens/s x {flops_tok / 1e6:.0f} MFLOP per token / the {dtype} matmul peak at {threads} threads "
           f"({peak / 1e9:.0f} GFLOP/s, hardware.py)" if peak else "MFU: no matmul peak measured for this dtype",
           ]
    md[-1] += (": per token 4 x the frozen base's linear weights (forward + input gradients; frozen weights need no "
               "weight gradients), 6 x the LoRA weights, 4 x the LM head only for the explanation share of tokens "
               f"(the only logits the loss needs); attention products not counted ({100 * attn_tok / flops_tok:.0f}% "
               "more at these lengths). The same "
               "count for both sides, so the MFU ratio is the tokens/s ratio; the HF side also computes the LM "
               "head, in float32 logits, at every position (pads included), which this count calls waste.")
    md.append("")

    targets = []
    if "clsgen" in summary and "hf" in summary:
        c, h = summary["clsgen"], summary["hf"]
        ratio = c["tokens_per_s"] / h["tokens_per_s"]
        md.append(f"clsgen / HF tokens/s: **{ratio:.2f}x** (per-step rates: clsgen "
                  f"{', '.join(f'{x:.0f}' for x in c['rates'])}; HF {', '.join(f'{x:.0f}' for x in h['rates'])}). "
                  "clsgen computes LM logits only at explanation positions and groups batches by length; the head "
                  "adds one 576-wide dot product per example. The mean LM losses agree: both sides learn the same "
                  "targets under the same masking.")
        if h.get("padded_tokens") and peak:
            hf_exec = flops_tok + 4 * dims["lm_head"] * (h["padded_tokens"] - h["target_tokens"]) / h["real_tokens"]
            md.append(f"Counting what the HF side executes (the LM head at all {h['padded_tokens']} padded positions "
                      f"of its epoch, not only the {h['target_tokens']} explanation ones): {hf_exec / 1e6:.0f} MFLOP per "
                      f"real token, {100 * h['tokens_per_s'] * hf_exec / peak:.1f}% of the peak.")
        if "hf_grouped" in summary:
            g = summary["hf_grouped"]
            md.append(f"With `group_by_length` the HF side pads {g['padding_efficiency']:.3f} and runs "
                      f"{g['tokens_per_s']:.0f} tokens/s (one process; for contrast, not the target).")
        targets.append(Target("training tokens/s clsgen / HF Trainer+PEFT", ratio, ">= 1.0"))
    else:
        targets.append(Target("training tokens/s clsgen / HF Trainer+PEFT", float("nan"), ">= 1.0"))
    top6 = summary.get("clsgen-top6")
    if top6 and "hf" in summary:
        targets.append(Target("training tokens/s clsgen top-6 LoRA over a cached trunk / HF Trainer+PEFT (all "
                              "layers)", top6["tokens_per_s"] / summary["hf"]["tokens_per_s"], ">= 3.0"))
    md += ["", f"Padding efficiency (real / padded tokens) of one epoch over the whole PubMedQA training split "
           f"({padding[0]['examples']} examples, prompt + `LONG_ANSWER`), mean of {PADDING_SEEDS} seeds; the timed "
           "runs above hold too few examples to show it:", ""]
    md.append(table(["batch", "max length", "prompt cap", "mean tokens", "clsgen plan", "HF random (default)",
                     "HF group_by_length"],
                    [[p["batch_size"], p["max_length"], p["max_prompt_tokens"], p["mean_length"],
                      f"{p['clsgen']:.3f}", f"{p['hf']:.3f}", f"{p['hf_grouped']:.3f}"] for p in padding]))
    worst = min(p["clsgen"] for p in padding)
    targets.append(Target("clsgen padding efficiency (real / padded tokens, whole epoch, worst batch/length "
                          "setting)", worst, ">= 0.9"))
    if errors:
        md += ["", "Failed runs: " + "; ".join(errors)]
    if quick:
        md += ["", "_Quick mode: smaller batch, shorter rows, one round; read the full run's figures._"]
    return Section("Training throughput", "\n".join(md), figures, targets)


CLINIFACT_EPOCH_TOKENS = 400_756
"""Tokens of one CliniFact trial-disjoint training epoch (1259 rows, prompts capped at 320, verdict-only
targets; train_summary.json of the run in docs/results.md)."""
CLINIFACT_CACHE_TOKENS = 500_752
"""Tokens the trunk cache of that run holds (its 1259 training + 316 validation rows)."""


def _top_layers_md(summary: dict[str, dict[str, Any]], ok: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The LoRA band sweep: all layers against the top K over a cached trunk."""
    sides = ["clsgen"] + sorted((s for s in summary if s.startswith("clsgen-top")),
                                key=lambda s: -int(s.removeprefix("clsgen-top")))
    if len(sides) < 2 or "clsgen" not in summary:
        return []
    hf = summary.get("hf", {}).get("tokens_per_s")
    rows = []
    for side in sides:
        s = summary[side]
        cache = next((r["trunk_cache"] for r in ok[side] if r.get("trunk_cache", {}) and r["trunk_cache"]["computed"]),
                     None)
        cache_rate = cache["tokens"] / cache["seconds"] if cache and cache["seconds"] else None
        epoch_min = CLINIFACT_EPOCH_TOKENS / s["tokens_per_s"] / 60
        rows.append(["all 30" if side == "clsgen" else side.removeprefix("clsgen-top"), f"{s['tokens_per_s']:.0f}",
                     f"{s['tokens_per_s'] / hf:.2f}x" if hf else "-",
                     f"{s['tokens_per_s'] / summary['clsgen']['tokens_per_s']:.2f}x",
                     f"{cache_rate:.0f}" if cache_rate else "-",
                     f"{CLINIFACT_CACHE_TOKENS / cache_rate / 60:.1f}" if cache_rate else "-",
                     f"{epoch_min:.1f}", f"{s['peak_rss_mb']:.0f}" if s["peak_rss_mb"] else "-"])
    return ["", "LoRA in the top K layers only (`lora.top_layers: K`), the layers below a frozen trunk whose "
            "output is computed once per example and cached on disk; the same rows and steps. The CliniFact "
            f"columns are estimates from these rates: one trial-disjoint epoch ({CLINIFACT_EPOCH_TOKENS:,} tokens) "
            f"and its cache ({CLINIFACT_CACHE_TOKENS:,} tokens, built once and shared by every epoch and method):",
            "", table(["LoRA layers", "tokens/s", "/ HF (all layers)", "/ clsgen all layers", "cache build tokens/s",
                       "CliniFact cache min (est.)", "CliniFact epoch min (est.)", "peak RSS MB"], rows), ""]


def _lora_desc() -> str:
    from clsgen.config import LoraConfig

    lc = LoraConfig()
    return f"{lc.r}, alpha {lc.alpha}, dropout {lc.dropout}, targets {lc.target_modules}"


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        main(run)
