"""The one interface every classifier shares (CLSGen and each baseline), so evaluation never branches.

Like scikit-learn: `fit(train, validation)` learns from labelled examples and returns the classifier;
`predict_proba(examples)` returns an (n, 2) array, the probabilities of label 0 and label 1 (columns
in `classes_` order). `positive_proba(examples)` returns the second column alone, P(label 1), which
is what evaluation uses. Classifiers that write explanations also implement `explain(examples)`,
which returns one text per example (ending with the task's verdict line when the model follows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .data import Example


@runtime_checkable
class Classifier(Protocol):
    """A binary classifier over examples."""

    name: str

    def fit(self, train: Sequence[Example], validation: Sequence[Example]) -> Classifier: ...

    def predict_proba(self, examples: Sequence[Example]) -> np.ndarray:
        """(n, 2): P(label 0), P(label 1) per example."""
        ...

    def positive_proba(self, examples: Sequence[Example]) -> np.ndarray:
        """(n,): P(label 1) per example."""
        ...


class TwoColumnProba:
    """`predict_proba` as scikit-learn has it, from a classifier's `positive_proba`."""

    classes_ = np.array([0, 1])

    def positive_proba(self, examples: Sequence[Example]) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, examples: Sequence[Example]) -> np.ndarray:
        """(n, 2): P(label 0) and P(label 1) of each example; rows sum to 1."""
        p = np.asarray(self.positive_proba(examples), dtype=np.float64).reshape(-1)
        return np.column_stack([1.0 - p, p])


def positive_proba(classifier: object, examples: Sequence[Example]) -> np.ndarray:
    """P(label 1) from any classifier: its `positive_proba`, else column 1 of a two-column
    `predict_proba` (a one-column result is read as P(label 1), as older classifiers return it)."""
    method = getattr(classifier, "positive_proba", None)
    if callable(method):
        return np.asarray(method(examples), dtype=np.float64)
    p = np.asarray(classifier.predict_proba(examples), dtype=np.float64)  # type: ignore[attr-defined]
    return p[:, 1] if p.ndim == 2 and p.shape[1] == 2 else p


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
