"""Teachers: the models that write label-conditioned explanations, behind one small interface.

A teacher takes a batch of `Request`s (an example, its attempt number and the prompt) and returns one
`Reply` per request. `parallel` says how many `generate` calls the caller may run at once and
`batch_size` how many requests to hand each call:

* `LocalTeacher`: any HF causal LM (default: the embedded SmolLM2-135M), batched generation with left
  padding; first attempt greedy, retries sampled. `parallel = 1`.
* `OpenAITeacher` (openai_teacher.py): any OpenAI-compatible server (`/v1/chat/completions`: vLLM, SGLang, Ollama,
  llama.cpp, a hosted API); up to `concurrency` requests in flight, timeouts, retries with
  exponential backoff on 429 (honouring Retry-After), 5xx, connection errors, dropped connections,
  cut-off bodies and malformed replies, each counted by kind (`TRANSPORT_FAULTS`).
* `ReferenceTeacher`: an existing rationale field (PubMedQA `long_answer`) formatted into the target.

The interface (`Request`, `Reply`, `Teacher`, `TRANSPORT_FAULTS`) is in teacher.py.
`check(examples)` validates settings before any work (model loads, server reachable, model served,
API key present) and raises a `ClsgenError` naming the setting to fix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..config import TeacherConfig
from ..data import Example
from ..errors import ClsgenError
from ..task import ELLIPSIS
from ..verdict import verdict_line
from .openai_teacher import OpenAITeacher
from .prompts import TeacherPrompt
from .teacher import Reply, Request, Teacher, request_seed

# ============================================================================ local HF model


def _row_sampler_class() -> type:
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        """Runs last, after temperature and top-p: draws each row's next token from that row's own
        seeded generator and leaves only that token possible, so generate's own (batch-wide) draw
        just takes it."""

        def __init__(self, seeds: list[int], device: Any):
            import torch

            self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            import torch

            probs = torch.softmax(scores.float(), dim=-1)
            picked = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
            only = torch.full_like(scores, float("-inf"))
            only.scatter_(1, picked[:, None], 0.0)
            return only

    return RowSampler


def _RowSampler(seeds: list[int], device: Any) -> Any:  # noqa: N802 - transformers is imported lazily
    return _row_sampler_class()(seeds, device)


class LocalTeacher:
    """A local HF causal LM; `backbone` (a `clsgen.backbones.Backbone`) skips loading `model`."""

    kind = "local"
    parallel = 1

    def __init__(self, model: str = "smollm2-135m", *, backbone: Any = None, dtype: str = "auto",
                 temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 256,
                 batch_size: int = 8, seed: int = 0):
        if max_new_tokens < 1 or batch_size < 1:
            raise ClsgenError("teacher.max_new_tokens and teacher.batch_size must be >= 1")
        if temperature <= 0:
            raise ClsgenError(f"teacher.temperature must be > 0 for sampled retries, got {temperature}")
        self.model_spec = backbone.spec if backbone is not None else model
        self.backbone = backbone
        self._loaded = False  # close() frees only a model this teacher loaded itself
        self.dtype = dtype if backbone is None else str(backbone.model.dtype).replace("torch.", "")
        self.temperature, self.top_p = temperature, top_p
        self.max_new_tokens, self.batch_size, self.seed = max_new_tokens, batch_size, seed

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_spec, "dtype": self.dtype,
                "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                "first_attempt": "greedy"}

    def check(self, examples: Sequence[Example]) -> None:
        if self.backbone is None:
            from ..backbones import load_model

            self.backbone = load_model(self.model_spec, dtype=self.dtype)
            self._loaded = True

    def close(self) -> None:
        if self._loaded:
            self.backbone, self._loaded = None, False

    # ---------------------------------------------------------------- prompts
    def _encode(self, text: str) -> list[int]:
        return list(self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, prompt: TeacherPrompt, fields: dict[str, str], label: int) -> str:
        return self.backbone.tokenizer.apply_chat_template(prompt.messages(fields, label),
                                                           add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, request: Request) -> list[int]:
        """The rendered teacher prompt; long fields are cut (as the task cuts them) so that they get
        the same token budget as in the student's prompt, `task.max_prompt_tokens`."""
        prompt, ex = request.prompt, request.example
        ids = self._encode(self._render(prompt, ex.fields, request.label))
        task = prompt.task
        empty = {f: "" for f in task.fields}
        student_fixed = len(self._encode(task.render_prompt(self.backbone.tokenizer, {**ex.fields, **empty})))
        teacher_fixed = len(self._encode(self._render(prompt, {**ex.fields, **empty}, request.label)))
        limit = teacher_fixed + max(task.max_prompt_tokens - student_fixed, 16)
        if len(ids) <= limit:
            return ids
        budget = limit - teacher_fixed - len(task.fields) * len(self._encode(ELLIPSIS))
        for _ in range(6):
            cut = task.cut_fields(self.backbone.tokenizer, ex.fields, max(budget, len(task.fields)))
            ids = self._encode(self._render(prompt, {**ex.fields, **cut}, request.label))
            if len(ids) <= limit:
                return ids
            budget -= len(ids) - limit
        return ids

    # ---------------------------------------------------------------- generation
    def generate(self, requests: list[Request]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(requests)
        for greedy in (True, False):
            idx = [i for i, r in enumerate(requests) if r.greedy == greedy]
            if idx:
                out = self._generate([requests[i] for i in idx], greedy)
                for i, reply in zip(idx, out):
                    replies[i] = reply
        return replies  # type: ignore[return-value]

    def _generate(self, requests: list[Request], greedy: bool) -> list[Reply]:
        import torch

        from ..backbones import stop_token_ids
        from ..collate import pad_left

        started = time.perf_counter()
        model, tok = self.backbone.model, self.backbone.tokenizer
        prompts = [self.prompt_ids(r) for r in requests]
        pad = tok.pad_token_id
        input_ids, attention = pad_left(prompts, pad)
        width = input_ids.shape[1]
        device = next(model.parameters()).device
        eos_ids = stop_token_ids(model, tok)
        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, pad_token_id=pad,
                                      eos_token_id=sorted(eos_ids), do_sample=not greedy)
        if greedy:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=None)
            # each row draws from its own generator, so a retry samples the same text whatever batch it
            # shares: a resumed run equals an uninterrupted one
            kwargs["logits_processor"] = [_RowSampler([request_seed([r], self.seed) for r in requests], device)]
        loops = _LoopStop(width, eos_ids)
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(request_seed(requests, self.seed))
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 stopping_criteria=[loops.criterion()], **kwargs)
        share = (time.perf_counter() - started) / len(requests)
        replies = []
        for i, row in enumerate(out[:, width:].tolist()):
            end = next((k for k, t in enumerate(row) if t in eos_ids), None)
            if end is not None:
                new, finish = row[: end + 1], "stop"
            elif i in loops.stopped:  # cut short in a repetition loop: rejected as degenerate
                new, finish = row[: loops.stopped[i]], "loop"
            else:
                new, finish = row, "length"
            text = tok.decode(new, skip_special_tokens=True)
            replies.append(Reply(text=text, tokens=len(new), seconds=share, finish=finish))
        return replies


class _LoopStop:
    """Stops a sequence whose last `window` new tokens repeat with a period of at most `max_period`
    tokens (at least three turns of the same unit): it would be rejected as degenerate anyway, and
    would otherwise hold the whole batch until max_new_tokens. Sequences that already ended (an
    end-of-sequence token among their new tokens, then padding) are left alone."""

    def __init__(self, prompt_width: int, eos_ids: Any = (), window: int = 48, max_period: int = 16):
        self.prompt_width, self.window, self.max_period = prompt_width, window, max_period
        self.eos_ids = sorted(i for i in eos_ids if i is not None)
        self.stopped: dict[int, int] = {}

    def criterion(self) -> Any:
        from transformers import StoppingCriteria

        outer = self

        class Criterion(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return outer(input_ids)

        return Criterion()

    def __call__(self, input_ids: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_width:]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if new.shape[1] < self.window:
            return done
        tail = new[:, -self.window:]
        for p in range(1, self.max_period + 1):
            done |= (tail[:, p:] == tail[:, :-p]).all(dim=1)
        if self.eos_ids:
            done &= ~torch.isin(new, torch.tensor(self.eos_ids, device=new.device)).any(dim=1)
        for i in done.nonzero().flatten().tolist():
            self.stopped.setdefault(i, new.shape[1])
        return done


# ============================================================================ reference field


class ReferenceTeacher:
    """Formats an existing rationale (in `example.meta` or `example.fields`) as a teacher's reply:
    the rationale, a blank line, and the gold verdict line. Like every teacher's reply the verdict
    comes last whatever `task.verdict_position` is; training puts it where the task says."""

    kind = "reference"
    parallel = 1
    batch_size = 64

    def __init__(self, field: str = "long_answer"):
        self.field = field

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "field": self.field}

    def _reference(self, ex: Example) -> str | None:
        value = ex.meta.get(self.field, ex.fields.get(self.field))
        return value.strip() if isinstance(value, str) and value.strip() else None

    def check(self, examples: Sequence[Example]) -> None:
        if examples and all(self._reference(ex) is None for ex in examples):
            ex = examples[0]
            raise ClsgenError(f"no example has the reference field {self.field!r} (teacher.reference_field, "
                              f"--reference-field); example {ex.id!r} has fields {sorted(ex.fields)} and "
                              f"metadata {sorted(ex.meta)}")

    def generate(self, requests: list[Request]) -> list[Reply]:
        out = []
        for r in requests:
            ref = self._reference(r.example)
            if ref is None:
                out.append(Reply(None, error="missing_reference", final=True))
            else:
                out.append(Reply(f"{ref}\n\n{verdict_line(r.prompt.task.verbalizers[r.label])}"))
        return out

    def close(self) -> None:
        pass


# ============================================================================ factory


def make_teacher(cfg: TeacherConfig, task_name: str | None = None) -> Teacher:
    """The teacher a `TeacherConfig` describes."""
    if cfg.kind == "local":
        return LocalTeacher(cfg.model, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                            batch_size=cfg.batch_size)
    if cfg.kind == "openai":
        return OpenAITeacher(cfg.model, cfg.base_url, api_key_env=cfg.api_key_env,
                             temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                             concurrency=cfg.concurrency, timeout=cfg.timeout, max_retries=cfg.max_retries)
    if cfg.kind == "reference":
        name = cfg.reference_field or {"pubmedqa": "long_answer"}.get(task_name or "")
        if name is None:
            raise ClsgenError("the reference teacher needs teacher.reference_field (--reference-field): the "
                              "column holding the rationale")
        return ReferenceTeacher(name)
    raise ClsgenError(f"teacher.kind {cfg.kind!r} is not one of local, openai, reference")
