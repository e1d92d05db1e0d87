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


def fit_probe(head: ClassificationHead, train_pooled: np.ndarray, train_y: Sequence[int],
              dev_pooled: np.ndarray | None = None, dev_y: Sequence[int] | None = None,
              balanced: bool = True) -> dict[str, Any]:
    """Warm-start `head` from a logistic regression on pooled features (n, k, hidden).

    Sets the standardisation from the training rows, then fits scikit-learn's LogisticRegression on
    the standardised features, with C chosen by dev AUROC when dev rows of both classes are given. A
    'mix' head starts with softmax weight 0.9 on the layer whose own probe scores best on dev (uniform
    weights without dev rows). Returns what was chosen (C, dev AUROC per C, per layer for a mix).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.asarray(train_pooled, dtype=np.float64)
    shift = x.mean(0)
    scale = x.std(0) + 1e-6
    yt = np.asarray(train_y)
    weight = "balanced" if balanced else None
    has_dev = dev_pooled is not None and dev_y is not None and len(set(dev_y)) == 2 and len(dev_y) > 0
    mix = np.full(x.shape[1], 1.0 / x.shape[1])
    info: dict[str, Any] = {}
    if head.mix is not None and has_dev:
        # start the mix at the layer whose own probe does best on dev (softmax weight 0.9 there): a
        # uniform mix of every layer is dragged down by the weak early ones
        z, zd = (x - shift) / scale, (np.asarray(dev_pooled, dtype=np.float64) - shift) / scale
        by_layer = [float(roc_auc_score(dev_y, LogisticRegression(C=0.01, class_weight=weight, max_iter=2000)
                                        .fit(z[:, k], yt).decision_function(zd[:, k])))
                    for k in range(x.shape[1])]
        best_layer = int(np.argmax(by_layer))
        logits = np.zeros(x.shape[1])
        logits[best_layer] = np.log(9.0 * (x.shape[1] - 1))
        mix = np.exp(logits) / np.exp(logits).sum()
        info.update(best_layer=best_layer, dev_auroc_by_layer=[round(v, 4) for v in by_layer])
    with torch.no_grad():
        head.shift.copy_(torch.from_numpy(shift).float())
        head.scale.copy_(torch.from_numpy(scale).float())
        if head.mix is not None:
            head.mix.copy_(torch.from_numpy(np.log(mix)).float())

    def features(pooled: np.ndarray) -> np.ndarray:
        return (((np.asarray(pooled, dtype=np.float64) - shift) / scale) * mix[None, :, None]).sum(1)

    xt = features(x)
    grid = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    scores: dict[float, float] = {}
    if has_dev:
        xd = features(dev_pooled)
        for c in grid:
            lr = LogisticRegression(C=c, class_weight=weight, max_iter=2000).fit(xt, yt)
            scores[c] = float(roc_auc_score(dev_y, lr.decision_function(xd)))
        best = max(grid, key=lambda c: (scores[c], -c))
    else:
        best = 0.03
    lr = LogisticRegression(C=best, class_weight=weight, max_iter=2000).fit(xt, yt)
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(lr.coef_).float())
        head.linear.bias.copy_(torch.from_numpy(lr.intercept_).float())
    return {"C": best, "dev_auroc_by_C": {str(c): round(v, 4) for c, v in scores.items()}, **info}
