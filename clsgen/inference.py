"""Inference: one prefill over the prompt gives the probability and the KV cache; the explanation is
decoded from that same cache.

`Predictor` batches prompts with left padding (positions come from the attention mask, so a padded
row computes exactly what it would alone), reads the classification head at the last prompt token,
then runs a small greedy / sampling loop over the cache, stopping each row at its end of turn.
`clsgen.estimator.ClsgenClassifier` puts a Predictor in the protocol every classifier shares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .backbones import stop_token_ids as turn_end_ids
from .collate import collate_prompts, pad_left
from .data import Example
from .errors import ClsgenError
from .metrics import sigmoid
from .model import DualHeadModel, load_pretrained
from .modes import eval_mode
from .repeats import block_repeats
from .task import PromptIds, Task

MIN_NEW_TOKENS_ROOM = 16
"""Context positions kept free for the explanation when a prompt is cut to fit the model."""

Item = Example | Mapping[str, Any] | str


@dataclass
class Prediction:
    """The model's answer for one input: a probability, a label, and (optionally) an explanation."""

    probability: float
    """P(label 1), temperature-calibrated with the model's stored temperature."""
    label: int
    """1 when probability >= threshold, else 0."""
    threshold: float
    """The decision threshold used (stored with the model, chosen on dev)."""
    explanation: str | None = None
    """The generated text without its verdict line; None when no explanation was generated."""
    verdict: int | None = None
    """The label the explanation states on its verdict line (None: missing, ambiguous, not generated)."""
    text: str | None = None
    """The full generated text (explanation + verdict line); None when not generated."""
    logit: float = 0.0
    """The head's raw logit (before temperature)."""
    prompt_tokens: int = 0
    """Length of the rendered prompt in tokens (after truncation)."""
    truncated: bool = False
    """Whether long text fields were cut to fit `task.max_prompt_tokens` (or the model's context)."""
    id: str | None = None
    """The example's id when the input had one."""
    new_tokens: int = 0
    """Tokens generated for the explanation (including the end-of-turn token)."""
    token_ids: list[int] | None = field(default=None, repr=False)
    """The generated token ids (including the end-of-turn token); not part of `to_dict`."""
    draws: int = 0
    """Explanations decoded for this input: 1, or up to `rejection_samples` when rejection sampling
    redrew explanations whose verdict disagreed with the label; 0 when none was generated."""
    first_verdict: int | None = None
    """The verdict of the first explanation decoded (the model's own; `verdict` is the kept draw's)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("token_ids")
        return d


@dataclass
class StreamEvent:
    """One event of `Predictor.stream`: the probability first, then text deltas, then the result."""

    type: Literal["probability", "delta", "done"]
    probability: float | None = None
    label: int | None = None
    threshold: float | None = None
    delta: str | None = None
    """New explanation text (type 'delta')."""
    prediction: Prediction | None = None
    """The complete prediction (type 'done')."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "probability":
            d.update(probability=self.probability, label=self.label, threshold=self.threshold)
        elif self.type == "delta":
            d["delta"] = self.delta
        else:
            d["prediction"] = self.prediction.to_dict() if self.prediction else None
        return d


class Predictor:
    """Probability and explanation from one prefill; batched with left padding.

    The model is put in eval mode for each call and restored afterwards, so a training loop can
    use a Predictor on its own model.
    """

    def __init__(self, model: DualHeadModel, batch_size: int = 8, max_new_tokens: int = 256,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 stop_token_ids: Sequence[int] | None = None, progress: bool = False,
                 condition_on_head: bool = False, no_repeat_ngram_size: int = 0,
                 rejection_samples: int = 1, rejection_temperature: float = 0.7):
        """no_repeat_ngram_size: never generate a token that repeats an n-gram of this many tokens
        already generated in the turn (0: off; the prompt is not looked at, see `clsgen.repeats`).
        With the verdict first (task.verdict_position 'first') every turn opens with the verdict prefix
        ('Answer: '), forced; the LM states the verdict after it and explains. condition_on_head
        (head-conditioned decoding): the verdict line is forced to the label the head's probability gives
        (at this predictor's threshold) and the LM writes the explanation after it, so the stated verdict
        agrees by construction.
        rejection_samples (rejection sampling): an explanation whose verdict is missing or differs from
        the head's label is decoded again, by sampling at `rejection_temperature` (with `top_p`), until
        one agrees or `rejection_samples` explanations were decoded in all; when none agrees, the first
        is kept. Each Prediction says how many were decoded (`draws`) and what the first one stated
        (`first_verdict`): the first draw measures the model, the kept one is selected. `predict` only:
        `stream` sends the first draw as it is decoded."""
        problems = []
        if batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {batch_size}")
        if max_new_tokens < 0:
            problems.append(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not temperature > 0:
            problems.append(f"temperature must be > 0 (use do_sample=False for greedy), got {temperature}")
        if not 0 < top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {top_p}")
        if no_repeat_ngram_size < 0 or no_repeat_ngram_size == 1:
            problems.append(f"no_repeat_ngram_size must be 0 (off) or >= 2, got {no_repeat_ngram_size}")
        if rejection_samples < 1:
            problems.append(f"rejection_samples must be >= 1 (1: no redraws), got {rejection_samples}")
        if not rejection_temperature > 0:
            problems.append(f"rejection_temperature must be > 0, got {rejection_temperature}")
        if rejection_samples > 1 and condition_on_head:
            problems.append("rejection_samples and condition_on_head together: the forced verdict always agrees, "
                            "so nothing would be redrawn; use one of them")
        if condition_on_head and model.task.verdict_position != "first":
            problems.append("condition_on_head forces the verdict that opens the turn; the model was trained "
                            "with task.verdict_position=last")
        if problems:
            raise ClsgenError("; ".join(problems))
        self.model = model
        self.condition_on_head = condition_on_head
        self.tokenizer = model.tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature  # sampling; the calibration temperature is `temperature_scale`
        self.top_p = top_p
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.rejection_samples = rejection_samples
        self.rejection_temperature = rejection_temperature
        self.seed = seed
        self.progress = progress
        self.context = _context_length(model)
        self.task = _fit_task_to_context(model.task, self.context)
        self.stop_token_ids = sorted(set(stop_token_ids) if stop_token_ids is not None
                                     else turn_end_ids(model.causal_lm, model.tokenizer))

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, **kwargs: Any) -> Predictor:
        """Load a saved clsgen model directory (`DualHeadModel.save_pretrained`) into a Predictor."""
        model = load_pretrained(path, dtype=dtype)
        if device is not None:
            model.to(device)
        return cls(model, **kwargs)

    # ------------------------------------------------------------------ stored decision settings
    @property
    def threshold(self) -> float:
        return float(self.model.meta.get("threshold", 0.5))

    @property
    def temperature_scale(self) -> float:
        """The stored calibration temperature (not the sampling temperature)."""
        return float(self.model.meta.get("temperature", 1.0))

    # ------------------------------------------------------------------ inputs
    def fields_of(self, item: Item) -> dict[str, str]:
        """The task's text fields of one input, validated; raises ClsgenError with a fix."""
        return fields_of(item, self.task)

    def encode(self, item: Item) -> PromptIds:
        """The input's prompt token ids, long fields truncated inside per the task."""
        return self.task.encode_prompt(self.tokenizer, self.fields_of(item))

    # ------------------------------------------------------------------ probability only
    def logits(self, items: Sequence[Item]) -> np.ndarray:
        """Raw head logits (no temperature), one prefill per batch, no generation."""
        prompts = [self.encode(it) for it in _as_list(items)]
        out = np.zeros(len(prompts), dtype=np.float64)
        with eval_mode(self.model):
            for idx in self._batches(prompts, "scoring"):
                steps = self._batch_steps([prompts[i] for i in idx], explain=False, generator=None)
                out[idx] = next(steps).numpy()
        return out

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        """Calibrated P(label 1) for each input, without generating (batched by prompt length)."""
        return sigmoid(self.logits(items) / self.temperature_scale)

    def verdict_logits(self, items: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
        """Raw head logits and the LM's verdict logits, log P(verbalizer 1) - log P(verbalizer 0) at the
        verdict token right after the verdict prefix ('Answer: ') that opens the turn, teacher-forced:
        one prefill per batch over prompt + prefix (the head reads the prompt alone, as in `logits`).
        Defined for models trained with the verdict first (task.verdict_position 'first')."""
        if self.task.verdict_position != "first":
            raise ClsgenError("the verdict is scored at the start of the turn, where only a model trained "
                              "with task.verdict_position=first writes it")
        items = _as_list(items)
        prompts = [self.encode(it) for it in items]
        rows, pairs = [], []
        for item, prompt in zip(items, prompts):
            lines = self.verdict_lines(self.fields_of(item))
            at = len(lines[0]) - 1
            rows.append(list(prompt.input_ids) + lines[0][:at])
            pairs.append((lines[0][at], lines[1][at]))
        heads = np.zeros(len(items), dtype=np.float64)
        verdicts = np.zeros(len(items), dtype=np.float64)
        with eval_mode(self.model):
            for idx in self._batches(prompts, "verdicts"):
                input_ids, attention_mask = pad_left([rows[i] for i in idx], self.tokenizer.pad_token_id,
                                                     self.model.device)
                width = input_ids.shape[1]  # left padding: every row ends at the last column
                device = self.model.device
                prefix = torch.tensor([len(rows[i]) - len(prompts[i].input_ids) for i in idx], device=device)
                with torch.inference_mode():
                    out = self.model(input_ids, attention_mask, cls_index=width - 1 - prefix, lm_positions="none",
                                     verdict_at=torch.full((len(idx),), width, device=device),
                                     verdict_ids=torch.tensor([pairs[i] for i in idx], device=device))
                heads[idx] = out.cls_logits.float().cpu().numpy()
                verdicts[idx] = out.verdict_logits.float().cpu().numpy()
        return heads, verdicts

    def verdict_lines(self, fields: Mapping[str, str] | None = None) -> tuple[list[int], list[int]]:
        """Token ids opening the turn for label 0 and for label 1 (`Task.verdict_lines`)."""
        return self.task.verdict_lines(self.tokenizer, fields)

    # ------------------------------------------------------------------ probability + explanation
    def predict(self, items: Sequence[Item] | Item, explain: bool = True) -> list[Prediction]:
        """A Prediction per input; with `explain`, the explanation is decoded from the prefill's cache
        (and, with `rejection_samples` > 1, redrawn while its verdict disagrees with the label)."""
        items = _as_list(items)
        prompts = [self.encode(it) for it in items]
        with eval_mode(self.model):
            results = self._decode_rows(items, prompts, explain, self._generator(), self.temperature)
            if explain and self.max_new_tokens > 0 and self.rejection_samples > 1:
                self._redraw(items, prompts, results)
        return results

    def _decode_rows(self, items: list[Item], prompts: list[PromptIds], explain: bool,
                     generator: torch.Generator | None, temperature: float) -> list[Prediction]:
        """One Prediction per prompt, in order; batched by length. Sampled when `generator` is given."""
        results: list[Prediction | None] = [None] * len(items)
        for idx in self._batches(prompts, "explaining" if explain else "scoring"):
            batch = [prompts[i] for i in idx]
            steps = self._batch_steps(batch, explain=explain and self.max_new_tokens > 0, generator=generator,
                                      temperature=temperature)
            logits = next(steps)
            generated: list[list[int]] = [[] for _ in idx]
            for row_tokens in steps:
                for r, t in enumerate(row_tokens):
                    if t is not None:
                        generated[r].append(t)
            for r, i in enumerate(idx):
                results[i] = self._prediction(float(logits[r]), prompts[i], items[i],
                                              generated[r] if explain else None)
        return results  # type: ignore[return-value]

    def _redraw(self, items: list[Item], prompts: list[PromptIds], results: list[Prediction]) -> None:
        """Rejection sampling (in place): sample again the rows whose kept explanation does not state
        their label, up to `rejection_samples` draws per row; a row none of whose draws agrees keeps
        its first."""
        generator = torch.Generator(device=self.model.device).manual_seed(self.seed + 1)
        first = list(results)
        for draw in range(2, self.rejection_samples + 1):
            todo = [i for i, p in enumerate(results) if p.verdict != p.label]
            if not todo:
                break
            redrawn = self._decode_rows([items[i] for i in todo], [prompts[i] for i in todo], True,
                                        generator, self.rejection_temperature)
            for i, p in zip(todo, redrawn):
                p.logit, p.probability, p.label = first[i].logit, first[i].probability, first[i].label
                results[i] = p
                p.draws = draw
        for i, p in enumerate(results):
            if p.verdict != p.label:  # no draw agreed: keep the model's first
                first[i].draws = p.draws
                p = results[i] = first[i]
            p.first_verdict = first[i].verdict

    def stream(self, item: Item, explain: bool = True) -> Iterator[StreamEvent]:
        """Events for one input: the probability, then explanation text deltas, then the Prediction."""
        prompt = self.encode(item)
        generator = self._generator()
        with eval_mode(self.model):
            steps = self._batch_steps([prompt], explain=explain and self.max_new_tokens > 0,
                                      generator=generator)
            logit = float(next(steps)[0])
            probability = float(sigmoid(logit / self.temperature_scale))
            yield StreamEvent("probability", probability=probability,
                              label=int(probability >= self.threshold), threshold=self.threshold)
            ids: list[int] = []
            sent = ""
            for (token,) in steps:
                if token is None:
                    break
                ids.append(token)
                text = self._decode(ids)
                if len(text) > len(sent) and not text.endswith("\ufffd") and text.startswith(sent):
                    yield StreamEvent("delta", delta=text[len(sent):])
                    sent = text
            prediction = self._prediction(logit, prompt, item, ids if explain else None)
            if prediction.text is not None and len(prediction.text) > len(sent) and prediction.text.startswith(sent):
                yield StreamEvent("delta", delta=prediction.text[len(sent):])
        yield StreamEvent("done", prediction=prediction)

    # ------------------------------------------------------------------ chat
    def chat(self, messages: list[dict[str, str]], max_new_tokens: int, **kwargs: Any) -> Any:
        """An assistant reply to chat `messages` from the fine-tuned LM (a `clsgen.chat.ChatReply`);
        see `clsgen.chat.chat` for the decoding options, stop strings and streaming callback."""
        from .chat import chat

        return chat(self, messages, max_new_tokens, **kwargs)

    # ------------------------------------------------------------------ internals
    def _prediction(self, logit: float, prompt: PromptIds, item: Item,
                    token_ids: list[int] | None) -> Prediction:
        probability = float(sigmoid(logit / self.temperature_scale))
        p = Prediction(probability=probability, label=int(probability >= self.threshold),
                       threshold=self.threshold, logit=logit, prompt_tokens=len(prompt.input_ids),
                       truncated=prompt.truncated, id=_id_of(item))
        if token_ids is not None:
            text = self._decode(token_ids)
            p.text = text
            p.explanation = self.task.split_verdict(text)[0]
            p.verdict = self.task.parse_verdict(text)
            p.new_tokens = len(token_ids)
            p.token_ids = list(token_ids)
            p.draws, p.first_verdict = 1, p.verdict
        return p

    def _decode(self, token_ids: list[int]) -> str:
        kept = [t for t in token_ids if t not in self.stop_token_ids]
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    def _generator(self) -> torch.Generator | None:
        if not self.do_sample:
            return None
        return torch.Generator(device=self.model.device).manual_seed(self.seed)

    def _batches(self, prompts: list[PromptIds], what: str) -> Iterator[np.ndarray]:
        """Index batches of similar prompt length (less padding), longest first."""
        order = np.argsort([-len(p.input_ids) for p in prompts], kind="stable")
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.progress and batches:
            from tqdm import tqdm

            return iter(tqdm(batches, desc=what, unit="batch", leave=False))
        return iter(batches)

    def _batch_steps(self, prompts: list[PromptIds], explain: bool, generator: torch.Generator | None,
                     temperature: float | None = None) -> Iterator[Any]:
        """Yield the head logits (CPU float tensor) after the prefill, then, when explaining, one
        list per decoding step with each row's new token id (None once the row has stopped).
        Greedy without `generator`; sampled at `temperature` (default: the predictor's) with it."""
        input_ids, attention_mask = pad_left([p.input_ids for p in prompts], self.tokenizer.pad_token_id,
                                             self.model.device)
        with torch.inference_mode():
            out = self.model(input_ids, attention_mask, lm_positions="last" if explain else "none",
                             use_cache=explain)
        yield out.cls_logits.float().cpu()
        if not explain:
            return
        budget = min(self.max_new_tokens, self.context - input_ids.shape[1]) if self.context else \
            self.max_new_tokens
        rows = input_ids.shape[0]
        device = input_ids.device
        stop = torch.tensor(self.stop_token_ids or [-1], device=device)
        pad = torch.full((rows,), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        forced = self._forced_opening(out.cls_logits)
        cache, logits = out.past_key_values, out.lm_logits[:, -1]
        del out
        history: list[list[int]] = [[] for _ in range(rows)]
        for step in range(budget):
            with torch.inference_mode():
                if self.no_repeat_ngram_size:
                    logits = block_repeats(logits, history, self.no_repeat_ngram_size)
                tokens = self._next_tokens(logits, generator, temperature or self.temperature)
                if forced is not None and step < forced.shape[1]:
                    tokens = forced[:, step]
                tokens = torch.where(finished, pad, tokens)
            yield [None if f else t for f, t in zip(finished.tolist(), tokens.tolist())]
            for row, token in enumerate(tokens.tolist()):
                history[row].append(token)
            finished |= torch.isin(tokens, stop)
            if bool(finished.all()) or step == budget - 1:
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=1)
            with torch.inference_mode():
                out = self.model(tokens[:, None], attention_mask, lm_positions="last",
                                 past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.lm_logits[:, -1]

    def _forced_opening(self, cls_logits: torch.Tensor) -> torch.Tensor | None:
        """(rows, n) tokens that open each row's turn whatever the LM prefers, or None. With the verdict
        first: the verdict prefix ('Answer: '), part of the trained format like the chat template's
        assistant header, after which the LM states the verdict and explains; with `condition_on_head`,
        the whole verdict line of the label the head gives."""
        if self.task.verdict_position != "first":
            return None
        if self.condition_on_head:
            lines = self.verdict_lines()  # equally long: they differ first at their last token
            table = torch.tensor(lines, dtype=torch.long, device=cls_logits.device)
            p = torch.sigmoid(cls_logits.double() / self.temperature_scale)
            return table[(p >= self.threshold).long()]
        opening = self.task.opening(self.tokenizer)  # empty when the verdict word opens the turn
        if not opening:
            return None
        return torch.tensor(opening, dtype=torch.long, device=cls_logits.device).expand(cls_logits.shape[0], -1)

    def _next_tokens(self, logits: torch.Tensor, generator: torch.Generator | None,
                     temperature: float) -> torch.Tensor:
        if generator is None:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs > self.top_p  # always keeps the top token
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------- the head alone


def score(model: DualHeadModel, examples: Sequence[Any], batch_size: int = 8) -> np.ndarray:
    """P(label 1) of each example from the head: prompts only, left-padded, no LM logits."""
    fields = [x["fields"] if isinstance(x, Mapping) else x.fields for x in examples]
    prompts = [model.task.encode_prompt(model.tokenizer, f).input_ids for f in fields]
    logits = _score_prompts(model, prompts, model.tokenizer.pad_token_id, batch_size, model.device)
    return model.probabilities(torch.from_numpy(logits)).numpy()


@torch.no_grad()
def _score_prompts(model: Any, prompts: Sequence[Sequence[int]], pad_id: int, batch_size: int,
                   device: torch.device) -> np.ndarray:
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    logits = np.zeros(len(prompts), dtype=np.float32)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            batch = {k: v.to(device) for k, v in collate_prompts([prompts[i] for i in idx], pad_id).items()}
            out = model(**batch, lm_positions="none")
            logits[idx] = out.cls_logits.float().cpu().numpy()
    return logits


# ---------------------------------------------------------------------------------- helpers


def _as_list(items: Sequence[Item] | Item) -> list[Item]:
    if isinstance(items, (str, Example, Mapping)):
        return [items]
    try:
        return list(items)
    except TypeError:
        raise ClsgenError(f"expected a text, a dict of task fields, an Example, or a list of them; got "
                          f"{type(items).__name__}") from None


def _id_of(item: Item) -> str | None:
    if isinstance(item, Example):
        return item.id
    if isinstance(item, Mapping) and item.get("id") is not None:
        return str(item["id"])
    return None


def fields_of(item: Item, task: Task) -> dict[str, str]:
    """The task's text fields of one input (Example, dict or a bare text), validated: each present,
    text and non-empty; a ClsgenError says how to fix the input otherwise."""
    names = task.fields
    if isinstance(item, Example):
        given: Mapping[str, Any] = item.fields
    elif isinstance(item, Mapping):
        given = item["fields"] if isinstance(item.get("fields"), Mapping) else item
    elif isinstance(item, str):
        if len(names) != 1:
            raise ClsgenError(f"task {task.name!r} has {len(names)} text fields ({', '.join(names)}); a bare "
                              "text is ambiguous: pass a dict of fields (CLI: " +
                              " ".join(f"--field {n}=..." for n in names) + ")")
        given = {names[0]: item}
    else:
        raise ClsgenError(f"expected a text, a dict of task fields or an Example, got {type(item).__name__}")
    missing = [n for n in names if n not in given]
    if missing:
        raise ClsgenError(f"the input has no field {missing[0]!r}; task {task.name!r} needs "
                          f"{', '.join(names)} (given: {', '.join(sorted(map(str, given))) or 'none'})")
    fields: dict[str, str] = {}
    for n in names:
        value = given[n]
        if not isinstance(value, str):
            raise ClsgenError(f"field {n!r} must be text, got {type(value).__name__}")
        if not value.strip():
            raise ClsgenError(f"field {n!r} is empty; give the text to classify")
        fields[n] = value
    return fields


def _context_length(model: DualHeadModel) -> int | None:
    config = getattr(model.causal_lm, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _fit_task_to_context(task: Task, context: int | None) -> Task:
    """The task, with max_prompt_tokens lowered when the model's context is shorter."""
    if context is None or task.max_prompt_tokens <= context - MIN_NEW_TOKENS_ROOM:
        return task
    return dataclasses.replace(task, max_prompt_tokens=max(context - MIN_NEW_TOKENS_ROOM, 1))
