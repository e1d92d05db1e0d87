"""Prompting baseline: the base instruct model, zero-shot, scored by its verbalizers' log-probabilities.

The probability of label 1 is a softmax over two sequence log-probabilities: the log-probability that
the assistant turn continues ``<prefix><verbalizer>`` for each verbalizer, where the prefix is by
default the start of the verdict line (``"Answer: "``). A verbalizer that spans several tokens is
scored as the sum of its tokens' log-probabilities.

Tokenization is joint: ``prefix + verbalizer`` is tokenized as one text (as the training targets
are), and the verbalizer's tokens are the ones after the longest token prefix shared by the two
verbalizers' sequences. Tokenizing the pieces separately would be wrong with BPE: ``"Answer: "``
ends in a lone space token while ``"Answer: TRUE"`` tokenizes as ``Answer``, ``:``, ``ĠTR``, ``UE``.
Scoring from the shared prefix on is exact: the shared tokens' probability cancels in the softmax.
(When one verbalizer's tokens are a prefix of the other's, each keeps at least its last token.)

Batches are left-padded with position ids from the attention mask, so a batched score equals the
example's score alone. The prompt is run once per example; multi-token verbalizers continue from its
KV cache. `verbalizer_log_probs` is also how the generation-only baseline (a training
configuration) turns its verdict into a probability: pass it the fine-tuned causal LM.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..backbones import EMBEDDED, Backbone, load_model, stop_token_ids
from ..classifier import TwoColumnProba
from ..collate import pad_left
from ..data import Example
from ..errors import ClsgenError
from ..modes import eval_mode
from ..task import Task
from ..verdict import VERDICT_PREFIX, split_verdict
from . import require_examples

DEFAULT_PREFIX = f"{VERDICT_PREFIX} "
"""The assistant text scored before the verbalizer: the start of the verdict line, ``Answer: ``."""

SCORINGS = ("prefix", "explanation")


# ---------------------------------------------------------------------------- scoring


def verbalizer_continuations(tokenizer: Any, prefix: str,
                             verbalizers: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """(tokens shared by every ``prefix + verbalizer``, each verbalizer's own continuation tokens).

    Each text is tokenized whole, so merges across the prefix/verbalizer boundary (a leading space
    joining the verbalizer's first token) come out as in training targets.
    """
    seqs = [_encode(tokenizer, prefix + v) for v in verbalizers]
    if any(len(s) == 0 for s in seqs):
        raise ClsgenError(f"a verbalizer tokenizes to nothing after the prefix {prefix!r}: "
                          f"{list(verbalizers)!r}; set task.verbalizers to non-empty words")
    if all(s == seqs[0] for s in seqs[1:]):
        raise ClsgenError(f"task.verbalizers {list(verbalizers)!r} tokenize identically; they must differ")
    shared, limit = 0, min(len(s) for s in seqs) - 1
    while shared < limit and all(s[shared] == seqs[0][shared] for s in seqs[1:]):
        shared += 1
    return seqs[0][:shared], [s[shared:] for s in seqs]


def _contexts(tokenizer: Any, task: Task, examples: Sequence[Example],
              prefix_text_fn: Callable[[Example], str] | None) -> list[tuple[list[int], list[list[int]]]]:
    """Per example: (prompt + tokens shared by the verbalizers, each verbalizer's continuation)."""
    cache: dict[str, tuple[list[int], list[list[int]]]] = {}
    out = []
    for ex in examples:
        prompt = task.encode_prompt(tokenizer, ex.fields).input_ids
        prefix = DEFAULT_PREFIX if prefix_text_fn is None else prefix_text_fn(ex)
        if prefix not in cache:
            cache[prefix] = verbalizer_continuations(tokenizer, prefix, task.verbalizers)
        shared, conts = cache[prefix]
        out.append((prompt + shared, conts))
    return out


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def _cache_name(model: Any) -> str:
    """The forward argument (and output field) naming the KV cache: 'cache' in newer transformers."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT forwards **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def verbalizer_log_probs(model: Any, tokenizer: Any, task: Task, examples: Sequence[Example],
                         prefix_text_fn: Callable[[Example], str] | None = None,
                         batch_size: int = 8) -> np.ndarray:
    """Log-probability of each verbalizer's full token sequence after prompt + assistant prefix.

    model: a causal LM (a HF ``*ForCausalLM``, or one wrapped by PEFT) returning ``.logits`` and a
        KV cache.
    prefix_text_fn: the assistant text before the verbalizer for an example (default: ``"Answer: "``;
        after an explanation: ``explanation + "\\n\\nAnswer: "``, see `explanation_prefix`).
    Returns an (n, 2) float64 array, columns in label order (task.verbalizers[0], [1]). Each entry is
    the sum of the verbalizer's token log-probabilities from the first token where the two
    verbalizers' sequences differ.

    One left-padded pass over the contexts (position ids from the attention mask) scores every
    verbalizer's first token and keeps the KV cache; each multi-token verbalizer then costs one short
    pass over its remaining tokens from a copy of that cache.
    """
    examples = require_examples(examples, "verbalizer scoring", "pass at least one example")
    if batch_size < 1:
        raise ClsgenError(f"batch_size must be at least 1, got {batch_size}")
    items = _contexts(tokenizer, task, examples, prefix_text_fn)
    scores = np.zeros((len(examples), 2), dtype=np.float64)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))  # similar lengths pad less
    device, pad_id, cache_name = _device(model), _pad_id(tokenizer), _cache_name(model)
    with eval_mode(model):
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                ids, mask = pad_left([items[i][0] for i in chosen], pad_id, device)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            logits_to_keep=1)
                cache = getattr(out, cache_name)
                first = torch.log_softmax(_logits(out)[:, -1].float(), dim=-1).cpu()
                for b, i in enumerate(chosen):
                    for k, cont in enumerate(items[i][1]):
                        scores[i, k] += float(first[b, cont[0]])
                passes = [k for k in range(2) if max(len(items[i][1][k]) for i in chosen) > 1]
                for k in passes:
                    rests = [items[i][1][k] for i in chosen]
                    width = max(len(r) for r in rests) - 1
                    # the verbalizer's tokens but its last as input (right-padded), each reading
                    # the log-prob of the next one
                    step = torch.full((len(chosen), width), pad_id, dtype=torch.long)
                    step_mask = torch.zeros((len(chosen), width), dtype=torch.long)
                    for b, r in enumerate(rests):
                        step[b, :len(r) - 1] = torch.tensor(r[:-1], dtype=torch.long)
                        step_mask[b, :len(r) - 1] = 1
                    step, step_mask = step.to(device), step_mask.to(device)
                    step_positions = positions[:, -1:] + 1 + torch.arange(width, device=device)[None, :]
                    logp = torch.log_softmax(_logits(model(
                        input_ids=step, attention_mask=torch.cat([mask, step_mask], dim=1),
                        position_ids=step_positions, use_cache=True,
                        **{cache_name: cache if k == passes[-1] else copy.deepcopy(cache)})).float(),
                        dim=-1).cpu()
                    for b, (i, r) in enumerate(zip(chosen, rests)):
                        for j in range(1, len(r)):
                            scores[i, k] += float(logp[b, j - 1, r[j]])
    return scores


def probability_of_one(log_probs: np.ndarray) -> np.ndarray:
    """P(label 1) = softmax over the two verbalizer log-probabilities, column 1."""
    lp = np.asarray(log_probs, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, lp[:, 0] - lp[:, 1]))


# ---------------------------------------------------------------------------- generation


def generate_explanations(model: Any, tokenizer: Any, task: Task, examples: Sequence[Example],
                          max_new_tokens: int = 256, batch_size: int = 8, no_repeat_ngram_size: int = 0) -> list[str]:
    """Greedy continuations of each example's task prompt, batched with left padding, cut at eos;
    no_repeat_ngram_size as in `Predictor` (no generated n-gram repeated; 0: off). The turn opens as
    `Predictor` opens it for a trained model (`Task.opening`: 'Answer: ' with the verdict first), so
    every generating method states its verdict where the verdict is read; the text includes it."""
    from transformers import LogitsProcessorList

    from ..repeats import NoRepeatGeneratedNGrams

    examples = require_examples(examples, "explain", "pass at least one example")
    opening = task.opening(tokenizer)
    prompts = [list(task.encode_prompt(tokenizer, ex.fields).input_ids) + opening for ex in examples]
    eos = sorted(stop_token_ids(model, tokenizer))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    device, pad_id = _device(model), _pad_id(tokenizer)
    with eval_mode(model):
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                ids, mask = pad_left([prompts[i] for i in chosen], pad_id, device)
                processors = LogitsProcessorList(
                    [NoRepeatGeneratedNGrams(no_repeat_ngram_size, ids.shape[1] - len(opening))]
                    if no_repeat_ngram_size else [])
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, temperature=None, top_p=None, top_k=None,
                                     pad_token_id=pad_id, eos_token_id=eos, logits_processor=processors)
                for b, i in enumerate(chosen):
                    new = out[b, ids.shape[1]:].tolist()
                    cut = next((j for j, t in enumerate(new) if t in eos), len(new))
                    texts[i] = tokenizer.decode(opening + new[:cut], skip_special_tokens=True).strip()
    return texts


def explanation_prefix(explanation: str | None) -> str:
    """The assistant text that scores the verdict after an explanation: its body, then ``Answer: ``.

    The explanation's own verdict line (if any) is dropped, so the verbalizers are scored where the
    model would write them; the layout matches `Task.target_text`.
    """
    body, _ = split_verdict(explanation)
    return f"{body}\n\n{DEFAULT_PREFIX}" if body else DEFAULT_PREFIX


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ClsgenError("the tokenizer has neither a pad nor an eos token; load it through "
                          "clsgen.backbones (prepare_tokenizer) or add one")
    return int(pad)


# ---------------------------------------------------------------------------- classifier


class PromptingClassifier(TwoColumnProba):
    """The base instruct model, zero-shot: P(1) from the verbalizers, explanations from greedy decoding.

    backbone_or_spec: a loaded `Backbone`, or a model spec for `load_model` (loaded on first use).
    scoring: 'prefix' scores the verbalizers right after ``Answer: `` (one forward pass, the default);
        'explanation' first generates the explanation and scores the verbalizers after it (slow:
        generation dominates; explanations are kept, so a later `explain` reuses them).
    """

    name = "prompting"

    def __init__(self, backbone_or_spec: Backbone | str = EMBEDDED, task: Task | None = None,
                 batch_size: int = 8, max_new_tokens: int = 256, scoring: str = "prefix",
                 dtype: str = "auto", no_repeat_ngram_size: int = 0):
        if task is None:
            raise ClsgenError("the prompting baseline needs a task (its prompt and verbalizers); "
                              "pass task=load_dataset(...).task")
        if scoring not in SCORINGS:
            raise ClsgenError(f"prompting scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        if batch_size < 1 or max_new_tokens < 1:
            raise ClsgenError(f"batch_size and max_new_tokens must be at least 1, got {batch_size} and "
                              f"{max_new_tokens}")
        self.task = task
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.scoring = scoring
        self.dtype = dtype
        self._backbone = backbone_or_spec if isinstance(backbone_or_spec, Backbone) else None
        self.spec = backbone_or_spec.spec if isinstance(backbone_or_spec, Backbone) else str(backbone_or_spec)
        self._explanations: dict[tuple[str, str, int], str] = {}

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_model(self.spec, dtype=self.dtype)
        return self._backbone

    def fit(self, train: Sequence[Example], validation: Sequence[Example]) -> PromptingClassifier:
        """Zero-shot: nothing is learned."""
        return self

    def log_probs(self, examples: Sequence[Example]) -> np.ndarray:
        """(n, 2) verbalizer log-probabilities (see `verbalizer_log_probs`)."""
        examples = require_examples(examples, "prompting predict_proba", "pass at least one example")
        fn = None
        if self.scoring == "explanation":
            texts = {id(ex): t for ex, t in zip(examples, self.explain(examples))}
            fn = lambda ex: explanation_prefix(texts[id(ex)])
        bb = self.backbone
        return verbalizer_log_probs(bb.model, bb.tokenizer, self.task, examples, fn, self.batch_size)

    def positive_proba(self, examples: Sequence[Example]) -> np.ndarray:
        """P(label 1): the verbalizers' probabilities renormalised (`predict_proba` gives both)."""
        return probability_of_one(self.log_probs(examples))

    def explain(self, examples: Sequence[Example], max_new_tokens: int | None = None) -> list[str]:
        examples = require_examples(examples, "prompting explain", "pass at least one example")
        n = max_new_tokens or self.max_new_tokens
        keys = [(ex.id, self.task.user_message(ex.fields), n) for ex in examples]
        todo = [i for i, k in enumerate(keys) if k not in self._explanations]
        if todo:
            bb = self.backbone
            texts = generate_explanations(bb.model, bb.tokenizer, self.task, [examples[i] for i in todo],
                                          n, self.batch_size, self.no_repeat_ngram_size)
            self._explanations.update({keys[i]: t for i, t in zip(todo, texts)})
        return [self._explanations[k] for k in keys]


__all__ = ["DEFAULT_PREFIX", "PromptingClassifier", "explanation_prefix", "generate_explanations",
           "probability_of_one", "verbalizer_continuations", "verbalizer_log_probs"]
