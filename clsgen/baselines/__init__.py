"""Baselines that CLSGen must beat or match, each behind the shared `Classifier` interface.

* ``prompting``: the base instruct model, zero-shot; P(1) from the verbalizers' log-probabilities.
* ``cnn``: a Kim-style CNN over word embeddings trained from scratch (the LCD benchmark's CNN).
* ``tfidf``: TF-IDF + logistic regression, C chosen on dev AUROC.
* ``generation_only``: a model trained by LoRA SFT on explanation + verdict (`train.w_cls = 0`), P(1)
  from its verdict scored with `prompting.verbalizer_log_probs`; it wraps a trained model folder, so
  the experiment builds it after training, not `make_baseline`.

Classification-only (`train.w_lm = 0`) is a configuration of the training loop, not a module here.

Importing this package does no work: `make_baseline` imports a baseline's module when it is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ClsgenError

if TYPE_CHECKING:
    from ..classifier import Classifier
    from ..data import Example
    from ..task import Task

BASELINES: dict[str, tuple[str, str]] = {
    "prompting": ("clsgen.baselines.prompting", "PromptingClassifier"),
    "cnn": ("clsgen.baselines.cnn", "CnnClassifier"),
    "tfidf": ("clsgen.baselines.tfidf", "TfidfClassifier"),
}


def make_baseline(name: str, **kwargs: Any) -> Classifier:
    """A baseline classifier by name ('prompting', 'cnn', 'tfidf'), built with `kwargs`.

    `prompting` needs `backbone_or_spec` and `task`; `cnn` and `tfidf` take an optional `task` (its
    template joins the fields into one text) and their hyperparameters.
    """
    if name not in BASELINES:
        raise ClsgenError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)} "
                          "(classification-only and generation-only are training configs)")
    module, cls = BASELINES[name]
    factory = getattr(importlib.import_module(module), cls)
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise ClsgenError(f"baseline {name!r} does not accept these settings: {e}") from None


def example_text(example: Example, task: Task | None = None) -> str:
    """One text per example for bag-of-words models: the task's user message, else the field values."""
    if task is not None:
        return task.user_message(example.fields)
    return "\n".join(str(v) for v in example.fields.values())


def require_examples(examples: Any, what: str, fix: str) -> list[Example]:
    """The examples as a list; a clear error when there are none."""
    items = list(examples)
    if not items:
        raise ClsgenError(f"{what} got no examples; {fix}")
    return items
