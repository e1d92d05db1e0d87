"""A Kim-style CNN over word embeddings, trained from scratch (the LCD benchmark's CNN baseline).

Text -> lower-case words, numbers and punctuation marks (so ``p < 0.05`` keeps its ``<``) -> ids from
a vocabulary built on the training split (words seen `min_freq` times; the rest are UNK) -> embeddings
(100) -> one convolution per filter width (1, 2, 3; 100 filters each) + ReLU -> max over time (only
over windows inside the text, so padding never changes a score) -> dropout -> one logit.

Training: Adam, binary cross-entropy, shuffled mini-batches of similar lengths, early stopping on the validation set's
AUROC with `patience` epochs, restoring the best epoch's weights. Deterministic given `seed` (the
global torch RNG is left as it was).
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..classifier import TwoColumnProba, labels_of
from ..data import Example
from ..errors import ClsgenError
from ..metrics import auroc
from ..task import Task
from . import example_text, require_examples

PAD, UNK = 0, 1
_POOL = 8  # mini-batches per length-sorting pool
log = logging.getLogger(__name__)
_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-case words, numbers (with decimals) and single punctuation marks."""
    return _TOKEN.findall(text.lower())


class KimCnn(nn.Module):
    """Embedding -> parallel 1-D convolutions -> masked max-over-time pooling -> dropout -> logit."""

    def __init__(self, vocab_size: int, embedding_dim: int, filter_widths: Sequence[int], n_filters: int,
                 dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, n_filters, w) for w in filter_widths)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(n_filters * len(filter_widths), 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids).transpose(1, 2)  # (batch, dim, time)
        pooled = []
        for conv in self.convs:
            h = F.relu(conv(x))  # (batch, filters, time - width + 1)
            width = conv.kernel_size[0]
            valid = (lengths - width + 1).clamp(min=1)  # windows that lie inside the text
            mask = torch.arange(h.shape[2], device=h.device)[None, :] < valid[:, None]
            pooled.append(h.masked_fill(~mask[:, None, :], float("-inf")).amax(dim=2))
        return self.out(self.dropout(torch.cat(pooled, dim=1))).squeeze(-1)


class CnnClassifier(TwoColumnProba):
    """Kim CNN baseline with early stopping on dev AUROC."""

    name = "cnn"

    def __init__(self, embedding_dim: int = 100, filter_widths: Sequence[int] = (1, 2, 3), n_filters: int = 100,
                 dropout: float = 0.5, max_epochs: int = 20, patience: int = 3, lr: float = 1e-3,
                 batch_size: int = 32, max_tokens: int = 512, min_freq: int = 2, seed: int = 0,
                 task: Task | None = None):
        problems = [f"{k} must be at least 1, got {v}" for k, v in
                    {"embedding_dim": embedding_dim, "n_filters": n_filters, "max_epochs": max_epochs,
                     "patience": patience, "batch_size": batch_size, "max_tokens": max_tokens,
                     "min_freq": min_freq}.items() if v < 1]
        if not filter_widths or any(w < 1 for w in filter_widths):
            problems.append(f"filter_widths must be positive widths, got {tuple(filter_widths)!r}")
        if not 0 <= dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {dropout}")
        if problems:
            raise ClsgenError("cnn settings: " + "; ".join(problems))
        self.embedding_dim = embedding_dim
        self.filter_widths = tuple(filter_widths)
        self.n_filters = n_filters
        self.dropout = dropout
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr = lr
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.min_freq = min_freq
        self.seed = seed
        self.task = task
        self.vocab_: dict[str, int] | None = None
        self.model_: KimCnn | None = None
        self.best_epoch_: int | None = None
        self.history_: list[dict[str, float]] = []

    # ------------------------------------------------------------------ text -> ids
    def _ids(self, examples: Sequence[Example]) -> list[list[int]]:
        assert self.vocab_ is not None
        out = []
        for ex in examples:
            ids = [self.vocab_.get(w, UNK) for w in words(example_text(ex, self.task))[: self.max_tokens]]
            out.append(ids or [UNK])
        return out

    def _batch(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(max(len(s) for s in seqs), max(self.filter_widths))
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return ids, torch.tensor([len(s) for s in seqs], dtype=torch.long)

    def _scores(self, seqs: Sequence[list[int]]) -> np.ndarray:
        """Logits, in input order (batched by length for speed)."""
        assert self.model_ is not None
        self.model_.eval()
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        logits = np.zeros(len(seqs), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), 256):
                chosen = order[start:start + 256]
                ids, lengths = self._batch([seqs[i] for i in chosen])
                logits[chosen] = self.model_(ids, lengths).double().numpy()
        return logits

    def _buckets(self, lengths: Sequence[int], generator: torch.Generator) -> list[torch.Tensor]:
        """Shuffled mini-batches of similar lengths (less padding, same result per seed): shuffle,
        sort each pool of `_POOL` batches by length, cut into batches, shuffle the batches."""
        order = torch.randperm(len(lengths), generator=generator).tolist()
        pool = self.batch_size * _POOL
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        return [torch.tensor(batches[i]) for i in torch.randperm(len(batches), generator=generator).tolist()]

    # ------------------------------------------------------------------ fit / predict
    def fit(self, train: Sequence[Example], validation: Sequence[Example]) -> CnnClassifier:
        train = require_examples(train, "cnn fit", "pass a non-empty training split")
        y = labels_of(train)
        if len(set(y.tolist())) < 2:
            raise ClsgenError(f"cnn fit needs both labels in the training split, got only {int(y[0])}")
        validation = list(validation)
        y_dev = labels_of(validation) if validation else np.zeros(0, dtype=int)
        early_stopping = len(set(y_dev.tolist())) == 2  # else: train all max_epochs

        counts = Counter(w for ex in train for w in words(example_text(ex, self.task))[: self.max_tokens])
        kept = sorted((w for w, c in counts.items() if c >= self.min_freq), key=lambda w: (-counts[w], w))
        self.vocab_ = {w: i + 2 for i, w in enumerate(kept)}
        x = self._ids(train)
        x_dev = self._ids(validation) if early_stopping else []

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model_ = KimCnn(len(self.vocab_) + 2, self.embedding_dim, self.filter_widths, self.n_filters,
                                 self.dropout)
            optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
            generator = torch.Generator().manual_seed(self.seed)
            targets = torch.tensor(y, dtype=torch.float32)
            best: tuple[float, int, dict[str, Any]] | None = None
            self.history_ = []
            for epoch in range(1, self.max_epochs + 1):
                self.model_.train()
                total = 0.0
                for idx in self._buckets([len(s) for s in x], generator):
                    ids, lengths = self._batch([x[i] for i in idx.tolist()])
                    loss = F.binary_cross_entropy_with_logits(self.model_(ids, lengths), targets[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(idx)
                record = {"epoch": epoch, "train_loss": total / len(x)}
                if early_stopping:
                    record["dev_auroc"] = auroc(y_dev, self._scores(x_dev))
                self.history_.append(record)
                log.info("cnn epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                              if k != "epoch"))
                if not early_stopping:
                    continue
                if best is None or record["dev_auroc"] > best[0]:
                    best = (record["dev_auroc"], epoch, copy.deepcopy(self.model_.state_dict()))
                elif epoch - best[1] >= self.patience:
                    break
        if best is not None:
            self.model_.load_state_dict(best[2])
            self.best_epoch_ = best[1]
        else:
            self.best_epoch_ = self.max_epochs
        self.model_.eval()
        return self

    def positive_proba(self, examples: Sequence[Example]) -> np.ndarray:
        """P(label 1) of each example (`predict_proba` gives both columns)."""
        if self.model_ is None:
            raise ClsgenError("cnn predict_proba before fit; call fit(train, validation) first")
        examples = require_examples(examples, "cnn predict_proba", "pass at least one example")
        return np.exp(-np.logaddexp(0.0, -self._scores(self._ids(examples))))
