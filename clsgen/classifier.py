"""The one interface every classifier shares (CLSGen and each baseline), so evaluation never branches.

`fit(train, validation)` learns from labelled examples; `predict_proba(examples)` returns P(label 1)
for each example. Classifiers that write explanations also implement `explain(examples)`, which
returns one text per example (ending with the task's verdict line when the model follows it).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .data import Example


@runtime_checkable
class Classifier(Protocol):
    """A binary classifier over examples."""

    name: str

    def fit(self, train: Sequence[Example], validation: Sequence[Example]) -> "Classifier": ...

    def predict_proba(self, examples: Sequence[Example]) -> np.ndarray: ...


@runtime_checkable
class Explainer(Protocol):
    """A classifier that also explains its decisions in words."""

    def explain(self, examples: Sequence[Example], max_new_tokens: int = 256) -> list[str]: ...


@runtime_checkable
class VerdictScorer(Protocol):
    """A generating classifier that can give the verdict its explanation would state for every row
    without generating it (teacher-forced scoring of the verbalizers where the verdict is written)."""

    def verdicts(self, examples: Sequence[Example]) -> list[int | None]: ...


def labels_of(examples: Sequence[Example]) -> np.ndarray:
    """Gold labels as an int array; every example must be labelled."""
    missing = [ex.id for ex in examples if ex.label is None]
    if missing:
        from .errors import ClsgenError

        raise ClsgenError(f"{len(missing)} examples have no label (first: {missing[0]!r}); "
                          "evaluation and training need gold labels")
    return np.array([ex.label for ex in examples], dtype=int)
