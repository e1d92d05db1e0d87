"""The training loop: one explicit loop on `accelerate` for the dual-head model.

    loss = w_cls * BCE(head(h_last_prompt), y; pos_weight) + w_lm * CE(explanation tokens)

Both terms are normalised over the whole optimizer step (every micro-batch on every process): the
BCE by the step's examples, the CE by the step's explanation tokens. So gradient accumulation and
data parallelism change how a global batch is computed, never the gradient it gives, and a run on
N processes with batch b matches one process with batch N * b.

What one call of `train` does:
  1. checks the configuration against the model and task (before anything slow);
  2. builds base LM + LoRA + head, encodes the examples once (prompt + teacher explanation);
  3. runs AdamW (separate learning rate for the head) with warm-up + cosine/linear decay, gradient
     accumulation and clipping, over length-grouped batches planned from (seed, epoch) alone;
  4. evaluates on the dev split (AUROC, losses), keeps the best model by dev AUROC, stops early;
  5. writes resumable checkpoints `out/checkpoints/step-N/` atomically (adapter + head,
     optimizer, scheduler, RNG of every process, data position); `resume=True` continues a killed run
     to the same weights as an uninterrupted one;
  6. saves the best model to `out/` (PEFT adapter, head, tokenizer, clsgen.json) with
     `train_log.jsonl` and `train_summary.json` (tokens/s, padding efficiency, memory, time).

The module reads top down: `train` -> `_train` (the loop) -> its steps (`_build_model`, `_start_run`,
`_dev_evaluation`, `_save_position`, `_final_weights`) -> `_step` (one optimizer step) -> `_evaluate`.
Beside it: `training_data` (the examples), `checkpoints` (step-N/, the best model, installing it),
`train_log` (the log and the summary), `trunk` (the cached trunk, the probe warm-start) and
`distributed` (what the processes of a launch share).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .checkpoints import (
    CHECKPOINTS, LoopState, best_dir, install_model, list_checkpoints, load_checkpoint, load_model_weights,
    register_checkpoint_hooks, remove_stale_temporaries, resume_checkpoint, run_fingerprint, save_checkpoint,
    save_model,
)
from .collate import Encoded, encode_example, padding_stats, plan_epoch, training_task
from .config import Config
from .datasets import task_from_config
from .distributed import check_in_sync, configure_launcher, plain_parallel, release
from .errors import ClsgenError, ConfigError
from .files import atomic_write_json, atomic_write_text, check_writable, writing
from .model import DualHeadModel
from .task import Task
from .train_log import (
    LOG_FILE, SUMMARY_FILE, available_trackers, describe_data, eval_line, flatten, log_record, summarize,
    summary_line, truncate_log,
)
from .training_data import TrainExample, join_explanations, load_training_examples
from .trunk import cached_trunk, model_inputs, probe_init, training_batch

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINTS", "LOG_FILE", "SUMMARY_FILE", "TrainExample", "TrainResult", "join_explanations",
           "load_training_examples", "train"]
"""The names other code imports from here; the examples, checkpoints and log live in their own modules."""

CONFIG_FILE = "train_config.yaml"


# ----------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What `train` returns; the same figures are in `out_dir/train_summary.json`."""

    out_dir: Path
    steps: int
    best_step: int | None
    best_dev_auroc: float | None
    summary: dict[str, Any] = field(default_factory=dict)
    model: DualHeadModel | None = None
    """The trained model in memory with the best weights (None under FSDP / ZeRO-3 sharding)."""


# ----------------------------------------------------------------------------- public entry points


def train(cfg: Config, train_examples: Sequence[Any] | str | Path,
          dev_examples: Sequence[Any] | str | Path | None, out_dir: str | Path,
          resume: bool | str | Path = False, *, task: Task | None = None,
          progress: bool = True, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train the dual-head model on `train_examples`, select on `dev_examples`, save to `out_dir`.

    Examples: a file (synth JSONL, JSONL/CSV/Parquet of examples) or a list of synth records, example
    dicts, `Example`s or `TrainExample`s (see `load_training_examples`). No dev examples (None or
    empty): no evaluation, the last weights are saved.

    `resume`: True continues from the latest checkpoint in `out_dir/checkpoints` (a fresh start when
    there is none), a path continues from that checkpoint. `task`: default `task_from_config(cfg)`.
    `on_step(step, record)` is called after every optimizer step (its exceptions stop the run).
    Works the same in one process and under `accelerate launch` / `torchrun` (DDP, FSDP, ZeRO).
    """
    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    tc = cfg.train
    out_dir = Path(out_dir)
    task = task or task_from_config(cfg)
    train_set = load_training_examples(train_examples)
    dev_set = load_training_examples(dev_examples) if dev_examples is not None else []
    if not train_set:
        raise ClsgenError("no training examples")
    ckpt_root = out_dir / CHECKPOINTS
    resume_dir = resume_checkpoint(ckpt_root, resume)
    if not resume and list_checkpoints(ckpt_root):
        raise ClsgenError(f"{out_dir} already holds a training run ({CHECKPOINTS}/ has checkpoints); pass "
                          "--resume (resume=True) to continue it, or choose another --out")
    check_writable(out_dir)  # a read-only or misplaced --out fails now, not after the model is built

    from accelerate import Accelerator

    trackers = available_trackers(tc.log_with)
    # accelerate decides the device and the precision (`accelerate config`, `accelerate launch
    # --mixed_precision`, ACCELERATE_MIXED_PRECISION) unless train.mixed_precision names one
    # with no GPU at all the CPU is the only device: say so, or several CPU processes (torchrun) are not
    # joined into one distributed run and race on the same checkpoint folders
    no_gpu = not torch.cuda.is_available() and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    accelerator = Accelerator(cpu=no_gpu, mixed_precision=None if tc.mixed_precision == "no" else tc.mixed_precision,
                              gradient_accumulation_steps=tc.grad_accum, log_with=trackers or None,
                              project_dir=str(out_dir))
    try:
        return _train(accelerator, cfg, task, train_set, dev_set, out_dir, resume_dir, trackers, progress,
                      on_step)
    finally:
        release(accelerator)


# ----------------------------------------------------------------------------- the loop


def _train(accelerator: Any, cfg: Config, task: Task, train_set: list[TrainExample],
           dev_set: list[TrainExample], out_dir: Path, resume_dir: Path | None, trackers: list[str],
           progress: bool, on_step: Callable | None) -> TrainResult:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    tc = cfg.train
    started = time.time()
    main = accelerator.is_main_process
    world = accelerator.num_processes

    # --- model and data (every check that can fail happens before the first step)
    set_seed(tc.seed)
    model, tokenizer, task = _build_model(cfg, task)
    pad_id = tokenizer.pad_token_id
    enc = _encode(task, tokenizer, train_set, tc)
    dev_enc = _encode(task, tokenizer, dev_set, tc)
    pos_weight = _pos_weight(tc.pos_weight, [ex.label for ex in train_set])
    selection = _selection_metric(tc.w_cls, dev_set, dev_enc)
    data_info = describe_data(train_set, enc, dev_set, pos_weight, selection)
    trunk, dev_trunk = None, None
    if model.trunk_layers:
        trunk, dev_trunk, data_info["trunk_cache"] = cached_trunk(accelerator, model, tc, enc, dev_enc, progress)
    if cfg.head.init == "probe" and resume_dir is None and tc.w_cls > 0:
        data_info["probe"] = probe_init(model, enc, trunk, dev_enc, dev_trunk, pad_id, cfg, pos_weight, progress)
    if tc.w_lm > 0 and not any(e.target_len for e in enc):
        log.warning("no training example has an explanation: the LM term is empty and only the head "
                    "learns; pass the synth JSONL as --data")

    # --- optimizer, schedule, plan
    optimizer = _optimizer(model, tc)
    steps_per_epoch = math.ceil(len(enc) / (tc.batch_size * world * tc.grad_accum))
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * steps_per_epoch))
    warmup = round(tc.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc.schedule, warmup, total_steps))
    model.train()
    configure_launcher(accelerator, tc)
    model, optimizer = accelerator.prepare(model, optimizer)
    register_checkpoint_hooks(accelerator)
    unwrapped: DualHeadModel = accelerator.unwrap_model(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fingerprint = run_fingerprint(cfg, enc, world)

    # --- resume (or start), then the loop
    state = _start_run(accelerator, model, scheduler, cfg, out_dir, resume_dir, fingerprint, trackers)

    log_every = max(1, tc.log_every)
    eval_every = tc.eval_every or steps_per_epoch
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (progress and main))
    plans: dict[int, list] = {}
    window = _Window()
    while state.step < total_steps and not state.stopped_early:
        epoch, k = divmod(state.step, steps_per_epoch)
        if epoch not in plans:
            plans = {epoch: plan_epoch([len(e) for e in enc], tc.batch_size, tc.grad_accum, world, tc.seed,
                                       epoch, tc.group_by_length)}
        t0, c0 = time.perf_counter(), time.process_time()
        sums, grad_norm = _step(accelerator, model, optimizer, trainable, enc, trunk, plans[epoch][k], pad_id,
                                pos_weight, tc, state)
        lrs = scheduler.get_last_lr()  # the rates this step used
        scheduler.step()
        state.step += 1
        seconds = time.perf_counter() - t0
        state.train_seconds += seconds
        state.train_cpu_seconds += time.process_time() - c0
        window.add(plans[epoch][k].examples(), enc, sums, seconds)
        record: dict[str, Any] = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4)}
        last = state.step == total_steps
        if state.step % log_every == 0 or last:
            record.update(window.record(tc, lrs, grad_norm))
            window = _Window()
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            log_record(accelerator, out_dir, record, trackers)
        bar.update(1)

        if dev_set and (state.step % eval_every == 0 or last):
            record.update(_dev_evaluation(accelerator, model, dev_enc, dev_trunk, pad_id, cfg, selection, state,
                                          out_dir, trackers, bar.write if progress else print))
        state.finished = last or state.stopped_early
        if state.step % tc.save_every == 0 or state.finished:
            _save_position(accelerator, model, scheduler, state, out_dir, fingerprint, steps_per_epoch,
                           tc.keep_checkpoints)
        if on_step is not None:
            on_step(state.step, record)
    bar.close()

    # --- final model: the best checkpoint's weights (else the last), saved to out_dir
    final_dir = _final_weights(accelerator, model, unwrapped, state, out_dir)
    in_sync = check_in_sync(accelerator, trainable)
    summary = summarize(state, started, total_steps, steps_per_epoch, data_info, world, tc, in_sync)
    # the head alone from the cached trunk: no layer ran, so tokens/s would count tokens nothing read
    summary["head_only"] = _head_only(tc.w_lm, tc.w_consistency, world) and unwrapped.head_reads_trunk_only
    if main:
        install_model(final_dir, out_dir)
        atomic_write_json(out_dir / SUMMARY_FILE, summary)
        accelerator.print(summary_line(summary, out_dir))
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.end_training()
    return TrainResult(out_dir, state.step, state.best_step,
                       state.best_value if selection == "dev_auroc" else None, summary,
                       unwrapped if plain_parallel(accelerator) else None)


# ----------------------------------------------------------------------------- the steps of _train


def _build_model(cfg: Config, task: Task) -> tuple[DualHeadModel, Any, Task]:
    """Base LM + fresh LoRA + fresh head as `cfg` says; its tokenizer; the task fitted to it."""
    from .backbones import load_model

    tc = cfg.train
    backbone = load_model(cfg.model.name, dtype=cfg.model.dtype, revision=cfg.model.revision,
                          trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = backbone.tokenizer
    task = training_task(task, tokenizer, tc.max_length)
    model = DualHeadModel.from_backbone(backbone, task, cfg.lora, seed=tc.seed, head=cfg.head)
    if tc.w_cls == 0:  # generation-only baseline: the head is not trained
        model.head.requires_grad_(False)
    if tc.gradient_checkpointing:
        model.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer, task


def _encode(task: Task, tokenizer: Any, examples: Sequence[TrainExample], tc: Any) -> list[Encoded]:
    """Each example as prompt + teacher explanation token ids (the explanation only with an LM term)."""
    return [encode_example(task, tokenizer, ex.fields, ex.label, ex.explanation, tc.max_length,
                           with_target=tc.w_lm > 0, verdict_only=tc.verdict_only) for ex in examples]


def _optimizer(model: DualHeadModel, tc: Any) -> torch.optim.Optimizer:
    """AdamW over the trainable LoRA parameters (train.lr) and the head's (train.head_lr)."""
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    groups = [{"params": lora_params, "lr": tc.lr}] + ([{"params": head_params, "lr": tc.head_lr}]
                                                        if head_params else [])
    return torch.optim.AdamW(groups, weight_decay=tc.weight_decay)


def _start_run(accelerator: Any, model: Any, scheduler: Any, cfg: Config, out_dir: Path, resume_dir: Path | None,
               fingerprint: Any, trackers: list[str]) -> LoopState:
    """The loop's state (a fresh one, or the resumed checkpoint's); out_dir readied, trackers started."""
    state = LoopState()
    if resume_dir is not None:
        state = load_checkpoint(accelerator, model, scheduler, resume_dir, fingerprint)
        accelerator.print(f"resumed from {resume_dir} at step {state.step}")
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
        truncate_log(out_dir / LOG_FILE, state.step)
        atomic_write_text(out_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if trackers:
        accelerator.init_trackers("clsgen", config=flatten(cfg.to_dict()))
    return state


def _dev_evaluation(accelerator: Any, model: Any, dev_enc: Sequence[Encoded], dev_trunk: Sequence[Any] | None,
                    pad_id: int, cfg: Config, selection: str | None, state: LoopState, out_dir: Path,
                    trackers: list[str], say: Callable[[str], Any]) -> dict[str, Any]:
    """Evaluate on dev, keep the model if it is the best so far, log and `say` the result, and mark
    an early stop; returns the dev metrics."""
    tc = cfg.train
    metrics = _evaluate(accelerator, model, dev_enc, dev_trunk, pad_id, cfg.eval.batch_size, tc.w_lm,
                        tc.w_consistency)
    _select(accelerator, model, metrics, selection, state, out_dir, tc.select_tolerance)
    log_record(accelerator, out_dir, {"event": "eval", **metrics}, trackers)
    if accelerator.is_main_process:
        say(eval_line(metrics))
    if tc.early_stopping and state.evals_since_best >= tc.early_stopping:
        state.stopped_early = True
        accelerator.print(f"early stopping at step {state.step}: no dev improvement in "
                          f"{tc.early_stopping} evaluations")
    return metrics


def _save_position(accelerator: Any, model: Any, scheduler: Any, state: LoopState, out_dir: Path, fingerprint: Any,
                   steps_per_epoch: int, keep: int) -> None:
    """A resumable checkpoint of this step: weights, optimizer, scheduler and the data position."""
    position = dict(zip(("epoch", "step_in_epoch"), divmod(state.step, steps_per_epoch)),
                    steps_per_epoch=steps_per_epoch)
    save_checkpoint(accelerator, model, out_dir / CHECKPOINTS, state,
                    {"fingerprint": fingerprint, "data_position": position,
                     "scheduler": scheduler.state_dict()}, keep)


def _final_weights(accelerator: Any, model: Any, unwrapped: DualHeadModel, state: LoopState, out_dir: Path) -> Path:
    """The folder holding the model to install: the best checkpoint (its weights loaded into
    `unwrapped`), else the last weights, saved now to checkpoints/last."""
    final_dir = best_dir(out_dir, state.best_step) if state.best_step is not None else None
    if final_dir is not None and not final_dir.is_dir():
        log.warning("%s is missing: saving the last weights instead of the best", final_dir)
        final_dir = None
    if final_dir is not None:
        if plain_parallel(accelerator):
            load_model_weights(unwrapped, final_dir)
        accelerator.wait_for_everyone()
    else:
        final_dir = out_dir / CHECKPOINTS / "last"
        with writing(final_dir, "the checkpoints saved before are intact; rerun with --resume to finish"):
            save_model(accelerator, model, final_dir, {"train": {"step": state.step}})
    return final_dir


def _step(accelerator: Any, model: Any, optimizer: Any, trainable: list, enc: Sequence[Encoded],
          trunk: Sequence[Any] | None, plan: Any, pad_id: int, pos_weight: float | None, tc: Any,
          state: LoopState) -> tuple[torch.Tensor, Any]:
    """One optimizer step over `plan` (grad_accum micro-batches on this process).

    Returns the step's (BCE sum, CE sum, consistency sum) over all processes and the gradient norm
    before clipping.
    """
    world = accelerator.num_processes
    real = plan.examples()
    n_step = len(real)  # examples in the whole step (every micro-batch, every process)
    t_step = sum(enc[i].loss_tokens for i in real)  # tokens carrying LM loss in the whole step
    sums = torch.zeros(3, device=accelerator.device)
    grad_norm = None
    for slot in plan.micro:
        for r in slot:  # padding figures cover every process (all of them know the plan)
            real_t, padded_t = padding_stats([enc[i] for i in r.indices])
            state.real_tokens += real_t if r.weights[0] > 0 else 0
            state.padded_tokens += padded_t
        mb = slot[accelerator.process_index]
        batch = training_batch(model, enc, trunk, mb.indices, pad_id, accelerator.device, mb.weights, pos_weight)
        with accelerator.accumulate(model):
            out = model(batch["input_ids"], batch["attention_mask"], batch["cls_index"],
                        labels=batch["labels"] if tc.w_lm > 0 else None, w_lm=tc.w_lm,
                        **_forward_inputs(batch, _head_only(tc.w_lm, tc.w_consistency, world)))
            cls_sum, lm_sum, cons_sum = _loss_sums(out, batch, pos_weight, tc.w_cls)
            loss = 0.0 * out.cls_logits.sum()  # keeps every trainable parameter in the graph
            if tc.w_cls > 0:
                loss = loss + tc.w_cls * cls_sum / max(n_step, 1)
            if tc.w_lm > 0 and t_step > 0:
                loss = loss + tc.w_lm * lm_sum / t_step
            if tc.w_consistency > 0:
                loss = loss + tc.w_consistency * cons_sum / max(n_step, 1)
            # accelerate divides by grad_accum and DDP averages over processes: undo both, so the
            # gradient is that of the step's sums divided by the step's counts
            accelerator.backward(loss * tc.grad_accum * world)
            sums += torch.stack([cls_sum.detach(), lm_sum.detach(), cons_sum.detach()])
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(trainable, tc.max_grad_norm or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    if not accelerator.sync_gradients:  # the plan gives every step exactly grad_accum micro-batches
        raise RuntimeError("gradient accumulation went out of step with the batch plan")
    return (accelerator.reduce(sums, reduction="sum") if world > 1 else sums), grad_norm


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _evaluate(accelerator: Any, model: Any, dev_enc: Sequence[Encoded], dev_trunk: Sequence[Any] | None,
              pad_id: int, batch_size: int, w_lm: float, w_consistency: float = 0.0) -> dict[str, Any]:
    """Dev AUROC and losses. Rows are prompt + target (when present), right-padded: the head reads
    the last prompt token, so its logit equals the prompt-only one. Batches are shared among the
    processes (every process runs as many, for FSDP/ZeRO collectives) and results gathered."""
    from accelerate.utils import gather_object

    from .metrics import UndefinedMetricError, auroc, brier

    model.eval()
    order = sorted(range(len(dev_enc)), key=lambda i: -len(dev_enc[i]))
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    world, rank = accelerator.num_processes, accelerator.process_index
    n_real = len(batches)
    while len(batches) % world:
        batches.append(batches[-1][:1])  # a duplicate to even the count; its results are dropped
    results: list[tuple[int, float]] = []
    lm_sum, lm_tokens = 0.0, 0
    for g in range(rank, len(batches), world):
        idx = batches[g]
        batch = training_batch(model, dev_enc, dev_trunk, idx, pad_id, accelerator.device)
        out = model(batch["input_ids"], batch["attention_mask"], batch["cls_index"],
                    labels=batch["labels"] if w_lm > 0 else None, w_lm=w_lm,
                    **_forward_inputs(batch, _head_only(w_lm, w_consistency, world)))
        if g >= n_real:
            continue
        verdict = out.verdict_logits if out.verdict_logits is not None else out.cls_logits.new_full(
            out.cls_logits.shape, float("nan"))
        results.extend(zip(idx, out.cls_logits.float().cpu().tolist(), verdict.float().cpu().tolist()))
        if out.lm_loss is not None and out.lm_tokens:
            lm_sum += float(out.lm_loss) * out.lm_tokens
            lm_tokens += out.lm_tokens
    model.train()
    gathered = gather_object([(results, lm_sum, lm_tokens)]) if world > 1 else [(results, lm_sum, lm_tokens)]
    logits = np.zeros(len(dev_enc), dtype=np.float64)
    verdict = np.full(len(dev_enc), np.nan)
    lm_sum, lm_tokens = 0.0, 0
    for res, s, t in gathered:
        for i, z, v in res:
            logits[i], verdict[i] = z, v
        lm_sum, lm_tokens = lm_sum + s, lm_tokens + t
    y = np.array([e.label for e in dev_enc])
    p = 1.0 / (1.0 + np.exp(-logits))
    bce = float(np.mean(np.logaddexp(0.0, logits) - y * logits))
    metrics: dict[str, Any] = {"dev_cls_loss": bce, "dev_brier": float(brier(y, p)), "dev_n": len(y)}
    try:
        metrics["dev_auroc"] = float(auroc(y, p))
    except UndefinedMetricError:
        metrics["dev_auroc"] = None
    if lm_tokens:
        metrics["dev_lm_loss"] = lm_sum / lm_tokens
    has = ~np.isnan(verdict)
    if has.any():  # the LM's teacher-forced verdict: its own AUROC and its agreement with the head
        try:
            metrics["dev_verdict_auroc"] = float(auroc(y[has], 1.0 / (1.0 + np.exp(-verdict[has]))))
        except UndefinedMetricError:
            metrics["dev_verdict_auroc"] = None
        metrics["dev_agreement"] = float(np.mean((verdict[has] > 0) == (logits[has] > 0)))
    return metrics


# ----------------------------------------------------------------------------- the best model and the log window


def _select(accelerator: Any, model: Any, metrics: dict[str, Any], selection: str | None, state: LoopState,
            out_dir: Path, tolerance: float = 0.0) -> None:
    """Keep the best model so far in checkpoints/best: dev AUROC (the latest evaluation within
    `tolerance` of the best seen), or dev LM loss for generation-only."""
    metrics["step"] = state.step
    state.last_eval = dict(metrics)
    value = metrics.get(selection) if selection else None
    if value is None:
        improved = False
    elif selection == "dev_auroc":
        peak = state.peak_value if state.peak_value is not None else state.best_value
        improved = peak is None or value > peak or (tolerance > 0 and value >= peak - tolerance)
        if peak is None or value > peak:
            state.peak_value = value
    else:
        improved = state.best_value is None or value < state.best_value
    if improved:
        state.best_value, state.best_step, state.evals_since_best = value, state.step, 0
        best = best_dir(out_dir, state.step)
        with writing(best, "the checkpoints saved before are intact; rerun with --resume to continue from them"):
            save_model(accelerator, model, best, {"train": state.last_eval})
    elif selection:
        state.evals_since_best += 1
    metrics["best"] = improved


class _Window:
    """Sums over the steps since the last log record."""

    def __init__(self) -> None:
        self.tokens, self.seconds, self.cls, self.lm, self.n, self.t, self.steps = 0, 0.0, 0.0, 0.0, 0, 0, 0
        self.consistency = 0.0

    def add(self, real: list[int], enc: Sequence[Encoded], sums: torch.Tensor, seconds: float) -> None:
        self.tokens += sum(len(enc[i]) for i in real)
        self.n += len(real)
        self.t += sum(enc[i].loss_tokens for i in real)
        self.cls += float(sums[0])
        self.lm += float(sums[1])
        self.consistency += float(sums[2])
        self.seconds += seconds
        self.steps += 1

    def record(self, tc: Any, lrs: list[float], grad_norm: Any) -> dict[str, Any]:
        cls = self.cls / max(self.n, 1) if tc.w_cls > 0 else None
        lm = self.lm / self.t if self.t and tc.w_lm > 0 else None
        cons = self.consistency / max(self.n, 1) if tc.w_consistency > 0 else None
        return {"loss": tc.w_cls * (cls or 0.0) + tc.w_lm * (lm or 0.0) + tc.w_consistency * (cons or 0.0),
                "cls_loss": cls, "lm_loss": lm, "consistency_loss": cons,
                "lr": lrs[0], "head_lr": lrs[1] if len(lrs) > 1 else None,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
                "seconds_per_step": self.seconds / max(self.steps, 1)}


# ----------------------------------------------------------------------------- loss and schedule


def _head_only(w_lm: float, w_consistency: float, world: int) -> bool:
    """The head alone is trained (no LM term, no consistency term; one process, since DDP wants every
    parameter in the graph): the forward pass can stop at the layer the head reads."""
    return w_lm == 0 and w_consistency == 0 and world == 1


def _forward_inputs(batch: Mapping[str, torch.Tensor], head_only: bool) -> dict[str, Any]:
    """The model's keyword inputs for a batch; with `head_only`, nothing that needs the LM (verdict
    positions, LM weights), so the pass stops at the head's layer (or skips the decoder when the head
    reads the cached trunk)."""
    inputs: dict[str, Any] = model_inputs(batch)
    if head_only:
        inputs = {k: v for k, v in inputs.items() if k in ("trunk_hidden", "trunk_pooled")}
        inputs["lm_positions"] = "none"
    return inputs


def _loss_sums(out: Any, batch: dict[str, torch.Tensor], pos_weight: float | None, w_cls: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of weighted per-example BCE, sum of per-token CE, sum of per-example consistency BCE
    between the LM's verdict and the head's detached probability) of one micro-batch."""
    logits = out.cls_logits.float()
    if w_cls > 0:
        pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits, batch["cls_labels"], pos_weight=pw, reduction="none")
        cls_sum = (bce * batch["weight"]).sum()
    else:
        cls_sum = logits.new_zeros(())
    lm_sum = out.lm_loss.float() * out.lm_tokens if out.lm_loss is not None else logits.new_zeros(())
    cons_sum = logits.new_zeros(())
    if out.verdict_logits is not None:
        has = (batch["verdict_at"] >= 0) & (batch["weight"] > 0)
        if bool(has.any()):
            target = torch.sigmoid(logits.detach())[has]
            cons_sum = F.binary_cross_entropy_with_logits(out.verdict_logits[has], target, reduction="sum")
    return cls_sum, lm_sum, cons_sum


def _lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up from 1/warmup to 1, then cosine or linear decay towards 0 (or constant)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _pos_weight(setting: Any, labels: Sequence[int]) -> float | None:
    if setting is None:
        return None
    if setting != "auto":
        return float(setting)
    pos = sum(1 for y in labels if y == 1)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        log.warning("the training data has a single class (%d positives, %d negatives)", pos, neg)
        return None
    return neg / pos


def _selection_metric(w_cls: float, dev: Sequence[TrainExample], dev_enc: Sequence[Encoded]) -> str | None:
    """dev AUROC when the head trains and dev has both classes; else dev LM loss when it can be measured."""
    if not dev:
        return None
    if w_cls > 0:
        if len({ex.label for ex in dev}) == 2:
            return "dev_auroc"
        log.warning("the dev split has a single class: AUROC is undefined, the last weights are kept")
        return None
    return "dev_lm_loss" if any(e.target_len for e in dev_enc) else None
