"""TF-IDF + logistic regression: the cheapest strong baseline.

Word uni- and bigrams (sublinear tf, l2-normalized) feed an L2-regularized logistic regression with
balanced class weights; the inverse regularization strength C is chosen on the validation set's
AUROC (ties go to the smaller C, the stronger regularization), then the model trained with it is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..classifier import TwoColumnProba, labels_of
from ..data import Example
from ..errors import ClsgenError
from ..metrics import auroc
from ..task import Task
from . import example_text, require_examples


class TfidfClassifier(TwoColumnProba):
    """TF-IDF features + logistic regression, C chosen on dev AUROC."""

    name = "tfidf"

    def __init__(self, C_grid: Sequence[float] = (0.01, 0.1, 1, 10, 100), ngram_range: tuple[int, int] = (1, 2),
                 max_features: int | None = 50000, class_weight: str | None = "balanced",
                 sublinear_tf: bool = True, min_df: int = 1, max_iter: int = 2000, task: Task | None = None):
        if not C_grid or any(c <= 0 for c in C_grid):
            raise ClsgenError(f"tfidf C_grid needs positive values, got {tuple(C_grid)!r}")
        self.C_grid = tuple(float(c) for c in C_grid)
        self.ngram_range = tuple(ngram_range)
        self.max_features = max_features
        self.class_weight = class_weight
        self.sublinear_tf = sublinear_tf
        self.min_df = min_df
        self.max_iter = max_iter
        self.task = task
        self.vectorizer_: Any = None
        self.model_: Any = None
        self.C_: float | None = None
        self.dev_auroc_: dict[float, float] = {}

    def _texts(self, examples: Sequence[Example]) -> list[str]:
        return [example_text(ex, self.task) for ex in examples]

    def fit(self, train: Sequence[Example], validation: Sequence[Example]) -> TfidfClassifier:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        train = require_examples(train, "tfidf fit", "pass a non-empty training split")
        y = labels_of(train)
        if len(set(y.tolist())) < 2:
            raise ClsgenError(f"tfidf fit needs both labels in the training split, got only {int(y[0])}")
        self.vectorizer_ = TfidfVectorizer(ngram_range=self.ngram_range, max_features=self.max_features,
                                           sublinear_tf=self.sublinear_tf, min_df=self.min_df, lowercase=True)
        x = self.vectorizer_.fit_transform(self._texts(train))
        validation = list(validation)
        y_dev = labels_of(validation) if validation else np.zeros(0, dtype=int)
        x_dev = self.vectorizer_.transform(self._texts(validation)) if validation else None
        can_select = len(set(y_dev.tolist())) == 2
        best: tuple[float, Any] | None = None
        self.dev_auroc_ = {}
        for c in self.C_grid if can_select else self.C_grid[len(self.C_grid) // 2:][:1]:
            model = LogisticRegression(C=c, class_weight=self.class_weight, max_iter=self.max_iter)
            model.fit(x, y)
            if can_select:
                score = auroc(y_dev, model.predict_proba(x_dev)[:, 1])
                self.dev_auroc_[c] = score
                if best is None or score > best[0]:
                    best = (score, model)
            else:  # no dev AUROC (empty or one class): the middle of the grid
                best = (float("nan"), model)
        assert best is not None
        self.model_ = best[1]
        self.C_ = float(self.model_.C)
        return self

    def positive_proba(self, examples: Sequence[Example]) -> np.ndarray:
        """P(label 1) of each example (`predict_proba` gives both columns)."""
        if self.model_ is None:
            raise ClsgenError("tfidf predict_proba before fit; call fit(train, validation) first")
        examples = require_examples(examples, "tfidf predict_proba", "pass at least one example")
        return self.model_.predict_proba(self.vectorizer_.transform(self._texts(examples)))[:, 1].astype(np.float64)
