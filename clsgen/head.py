"""The classification head and its readout: which layer's hidden states it reads, pooled how.

    p = sigmoid(w · features + b),  features = standardise(pool(h_L))   (or a softmax mix over L)

`layer` None reads the final, normed hidden states (what the LM head reads); an integer L reads
transformers' `hidden_states[L]`: the residual stream after L decoder layers (0: the embeddings; N:
the final normed states, as None); 'mix' reads every one of them, each
standardised, mixed by learned softmax weights. `pooling` 'last' takes the last prompt token,
'mean' the masked mean over the prompt tokens (padding and target tokens excluded), so left and
right padding pool the same rows. The standardisation (`shift`, `scale`) is identity unless the head
was warm-started from a probe (`fit_probe`); both travel in head.safetensors.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

Layer = int | Literal["mix"] | None
Pooling = Literal["last", "mean"]


class ClassificationHead(nn.Module):
    """Linear(hidden_size, 1) over pooled (and standardised) hidden states, kept in float32."""

    def __init__(self, hidden_size: int, layer: Layer = None, pooling: Pooling = "last",
                 num_layers: int | None = None, dropout: float = 0.0):
        super().__init__()
        if layer == "mix" and not num_layers:
            raise ValueError("a 'mix' head needs the model's num_layers")
        self.layer = layer
        self.pooling = pooling
        self.num_layers = num_layers
        k = len(self.read_layers())
        self.register_buffer("shift", torch.zeros(k, hidden_size))
        self.register_buffer("scale", torch.ones(k, hidden_size))
        self.mix = nn.Parameter(torch.zeros(k)) if layer == "mix" else None
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, 1)
        # small, not zero: a zero head would pass no gradient to LoRA at the first steps
        nn.init.normal_(self.linear.weight, std=hidden_size ** -0.5 * 0.1)
        nn.init.zeros_(self.linear.bias)

    @property
    def hidden_size(self) -> int:
        return self.linear.in_features

    def read_layers(self) -> list[int | None]:
        """The hidden states the head reads, in order (None: the final normed layer)."""
        if self.layer == "mix":
            return list(range(int(self.num_layers) + 1))
        return [self.layer]

    def settings(self) -> dict[str, Any]:
        """What clsgen.json records to rebuild this head."""
        return {"layer": self.layer, "pooling": self.pooling, "num_layers": self.num_layers}

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, k, hidden) pooled states -> (batch, hidden) standardised (and mixed) features."""
        z = (pooled.float() - self.shift) / self.scale
        if self.mix is None:
            return z[:, 0]
        return (torch.softmax(self.mix, dim=0)[None, :, None] * z).sum(1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, k, hidden) pooled states -> (batch,) logits."""
        return self.linear(self.dropout(self.features(pooled))).squeeze(-1)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        """Heads saved before the readout existed hold only `linear.*`: identity standardisation."""
        state = dict(state)
        state.setdefault("shift", torch.zeros_like(self.shift))
        state.setdefault("scale", torch.ones_like(self.scale))
        return super().load_state_dict(state, strict=strict, assign=assign)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, cls_index: torch.Tensor,
         pooling: Pooling) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden) over the prompt: its last token, or the masked mean of
    its tokens (positions up to `cls_index` that the attention mask keeps)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "last":
        return hidden[rows, cls_index].float()
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    keep = attention_mask.bool() & (positions[None, :] <= cls_index[:, None])
    summed = (hidden.float() * keep[..., None]).sum(1)
    return summed / keep.sum(1, keepdim=True).clamp(min=1)


PROBE_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
PROBE_FOLDS = 5


def fit_probe(head: ClassificationHead, train_pooled: np.ndarray, train_y: Sequence[int],
              dev_pooled: np.ndarray | None = None, dev_y: Sequence[int] | None = None,
              balanced: bool = True) -> dict[str, Any]:
    """Warm-start `head` from a logistic regression on pooled features (n, k, hidden).

    Sets the standardisation from the training rows, then fits scikit-learn's LogisticRegression on
    the standardised features, with C chosen by stratified 5-fold cross-validated AUROC on the
    training rows (measured on CliniFact: a dev split of a few hundred rows picks a layer and C by
    noise; the training rows are four times as many). A 'mix' head starts with softmax weight 0.9 on
    the layer whose own probe cross-validates best. The dev rows, when given, are scored, never used
    to choose. Returns what was chosen (C, CV AUROC per C, per layer for a mix, dev AUROC).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.asarray(train_pooled, dtype=np.float64)
    shift = x.mean(0)
    scale = x.std(0) + 1e-6
    yt = np.asarray(train_y)
    weight = "balanced" if balanced else None
    folds = cv_folds(yt)
    z = (x - shift) / scale
    mix = np.full(x.shape[1], 1.0 / x.shape[1])
    info: dict[str, Any] = {"folds": len(folds)}
    if head.mix is not None and folds:
        # start the mix at the layer whose own probe cross-validates best (softmax weight 0.9 there):
        # a uniform mix of every layer is dragged down by the weak early ones
        by_layer = [cv_auroc(z[:, k], yt, 0.01, folds, weight) for k in range(x.shape[1])]
        best_layer = int(np.argmax(by_layer))
        logits = np.zeros(x.shape[1])
        logits[best_layer] = np.log(9.0 * (x.shape[1] - 1))
        mix = np.exp(logits) / np.exp(logits).sum()
        info.update(best_layer=best_layer, cv_auroc_by_layer=[round(v, 4) for v in by_layer])
    with torch.no_grad():
        head.shift.copy_(torch.from_numpy(shift).float())
        head.scale.copy_(torch.from_numpy(scale).float())
        if head.mix is not None:
            head.mix.copy_(torch.from_numpy(np.log(mix)).float())

    xt = (z * mix[None, :, None]).sum(1)
    scores = {c: cv_auroc(xt, yt, c, folds, weight) for c in PROBE_C_GRID} if folds else {}
    best = max(PROBE_C_GRID, key=lambda c: (scores[c], -c)) if scores else 0.03
    lr = LogisticRegression(C=best, class_weight=weight, max_iter=2000).fit(xt, yt)
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(lr.coef_).float())
        head.linear.bias.copy_(torch.from_numpy(lr.intercept_).float())
    info.update(C=best, cv_auroc_by_C={str(c): round(v, 4) for c, v in scores.items()})
    if dev_pooled is not None and dev_y is not None and len(set(dev_y)) == 2:
        zd = (np.asarray(dev_pooled, dtype=np.float64) - shift) / scale
        info["dev_auroc"] = round(float(roc_auc_score(dev_y, lr.decision_function((zd * mix[None, :, None]).sum(1)))), 4)
    return info


def cv_folds(y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds of the training rows (none when a class has fewer than 2 rows)."""
    from sklearn.model_selection import StratifiedKFold

    k = min(PROBE_FOLDS, int(np.bincount(y, minlength=2).min())) if len(set(y.tolist())) == 2 else 0
    if k < 2:
        return []
    return list(StratifiedKFold(k, shuffle=True, random_state=0).split(np.zeros(len(y)), y))


def cv_auroc(x: np.ndarray, y: np.ndarray, c: float, folds: list, weight: str | None) -> float:
    """Out-of-fold AUROC of a logistic regression with inverse regularisation `c`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    scores = np.zeros(len(y))
    for train, held in folds:
        lr = LogisticRegression(C=c, class_weight=weight, max_iter=2000).fit(x[train], y[train])
        scores[held] = lr.decision_function(x[held])
    return float(roc_auc_score(y, scores))
