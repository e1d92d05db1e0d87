"""The cached frozen trunk: the hidden states entering the LoRA band, computed once per example.

When LoRA covers only decoder layers [a, b), layers 0..a-1 are frozen and deterministic, so their
output for an example never changes during training. `TrunkCache.build` runs them once per example
(no gradient, batched by length, the model's dtype) and stores, for every token of prompt + target,
the hidden states entering layer a, plus each trunk layer's pooled prompt states (last token and
mean) for a head that reads a trunk layer and for probe warm-starts. Training then runs only layers
a..N-1 from the cache.

On disk: `<cache_dir>/<key>/shard-*.safetensors`, where the key hashes what the states depend on
(base model, revision, dtype, the layer a, the library versions) and each example is stored under the
hash of its token ids, so every method of an experiment and every epoch share one entry and a
changed task or tokenizer gives new entries, never stale ones. Shards are written atomically as
they are computed: a killed build resumes with the examples it had not stored yet.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .collate import Encoded
from .errors import ClsgenError
from .files import atomic_write_json, cache_dir, writing

SHARD_EXAMPLES = 64
"""Examples per shard file (each shard is one atomic write)."""


@dataclass(frozen=True)
class TrunkStates:
    """One example's cached trunk output."""

    hidden: torch.Tensor
    """(seq, hidden) the hidden states entering the first LoRA layer, in the model's dtype."""
    pooled: dict[str, torch.Tensor]
    """'last' / 'mean': (trunk_layers + 1, hidden) float32 pooled prompt states after 0..a layers."""


def example_key(e: Encoded) -> str:
    return hashlib.sha256(json.dumps([e.prompt_len, e.input_ids]).encode()).hexdigest()[:24]


def cache_key(model: Any, start: int) -> dict[str, Any]:
    """What the cached states depend on besides the token ids."""
    import transformers

    lm = model.causal_lm
    return {"base_model": model.meta.get("base_model"), "revision": getattr(lm.config, "_commit_hash", None),
            "dtype": str(next(lm.parameters()).dtype), "trunk_layers": start,
            "num_layers": model.num_layers, "hidden_size": lm.config.hidden_size,
            "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}


class TrunkCache:
    """Cached trunk states of the examples of one model and trunk depth."""

    def __init__(self, model: Any, root: str | Path | None = None):
        self.model = model
        self.start = model.trunk_layers
        if self.start < 1:
            raise ClsgenError("the model has LoRA in every layer: there is no frozen trunk to cache")
        key = cache_key(model, self.start)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) if root is not None else cache_dir("trunk")
        self.dir = self.dir / digest
        self.key = key
        self._states: dict[str, TrunkStates] = {}

    # ------------------------------------------------------------------ build
    def stored_keys(self) -> set[str]:
        from safetensors import safe_open

        keys: set[str] = set()
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), "pt") as f:
                    keys.update(k.split(".")[0] for k in f.keys())
            except Exception:  # noqa: BLE001 - an unreadable shard (never half-written: atomic) is rebuilt
                shard.unlink(missing_ok=True)
        return keys

    def build(self, examples: Sequence[Encoded], batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
        """Compute and store the trunk states of the examples not stored yet; returns timing figures."""
        import time

        from tqdm.auto import tqdm

        with writing(self.dir, "the shards written before are intact; rerun to continue"):
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir / "key.json", self.key)
        have = self.stored_keys()
        todo: dict[str, Encoded] = {}
        for e in examples:
            k = example_key(e)
            if k not in have:
                todo.setdefault(k, e)
        started = time.perf_counter()
        tokens = sum(len(e) for e in todo.values())
        if todo:
            order = sorted(todo, key=lambda k: -len(todo[k]))
            bar = tqdm(total=tokens, desc=f"caching layers 0-{self.start - 1}", unit="tok", unit_scale=True,
                       dynamic_ncols=True, disable=not progress)
            for chunk in _chunks(order, SHARD_EXAMPLES):
                tensors: dict[str, torch.Tensor] = {}
                for batch in _chunks(chunk, batch_size):
                    for k, states in zip(batch, self._compute([todo[k] for k in batch])):
                        tensors[f"{k}.hidden"] = states.hidden
                        tensors[f"{k}.last"] = states.pooled["last"]
                        tensors[f"{k}.mean"] = states.pooled["mean"]
                    bar.update(sum(len(todo[k]) for k in batch))
                self._write_shard(chunk[0], tensors)
            bar.close()
        return {"examples": len(examples), "computed": len(todo), "tokens": tokens,
                "seconds": round(time.perf_counter() - started, 2)}

    @torch.no_grad()
    def _compute(self, rows: Sequence[Encoded]) -> list[TrunkStates]:
        from .collate import collate_train
        from .head import pool

        model = self.model
        batch = collate_train(rows, model.tokenizer.pad_token_id)
        device = model.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        cls_index = batch["cls_index"].to(device)
        was_training = model.training
        model.eval()
        try:
            states = run_trunk(model, ids, mask, self.start)
        finally:
            model.train(was_training)
        pooled = {how: torch.stack([pool(h, mask, cls_index, how) for h in states], dim=1)
                  for how in ("last", "mean")}
        return [TrunkStates(states[-1][i, : len(r)].contiguous().cpu(),
                            {how: p[i].contiguous().cpu() for how, p in pooled.items()})
                for i, r in enumerate(rows)]

    def _write_shard(self, first_key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self.dir / f"shard-{first_key}.safetensors"
        tmp = self.dir / f".{path.name}.{os.getpid()}.tmp"
        with writing(path, "the shards written before are intact; rerun to continue"):
            try:
                save_file(tensors, str(tmp))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ read
    def load(self, examples: Sequence[Encoded]) -> list[TrunkStates]:
        """The stored states of `examples` (build them first), held in memory after the first call."""
        from safetensors import safe_open

        wanted = {example_key(e) for e in examples} - set(self._states)
        if wanted:
            for shard in sorted(self.dir.glob("shard-*.safetensors")):
                with safe_open(str(shard), "pt") as f:
                    names = set(f.keys())
                    for k in {n.split(".")[0] for n in names} & wanted:
                        self._states[k] = TrunkStates(f.get_tensor(f"{k}.hidden"),
                                                      {"last": f.get_tensor(f"{k}.last"),
                                                       "mean": f.get_tensor(f"{k}.mean")})
            missing = wanted - set(self._states)
            if missing:
                raise ClsgenError(f"{len(missing)} examples are missing from the trunk cache {self.dir}; "
                                  "build it first (TrunkCache.build)")
        return [self._states[example_key(e)] for e in examples]


def run_trunk(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int
              ) -> list[torch.Tensor]:
    """The residual stream after 0, 1, ..., `start` layers (the last one enters layer `start`),
    computed by the decoder's own forward, stopped once layer `start` is reached."""
    from .model import _capture_layers, positions_from_mask

    decoder = model.decoder
    with _capture_layers(decoder, set(range(start + 1))) as captured:
        stop = decoder.layers[start].register_forward_pre_hook(_stop_forward)
        try:
            decoder(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=positions_from_mask(attention_mask), use_cache=False)
        except _TrunkDone:
            pass
        finally:
            stop.remove()
    return [captured[layer] for layer in range(start + 1)]


class _TrunkDone(Exception):
    """Raised on entering the first LoRA layer: the trunk's work is done."""


def _stop_forward(module: Any, args: Any) -> None:
    raise _TrunkDone


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i: i + size])


def collate_trunk(states: Sequence[TrunkStates], pooling: str) -> dict[str, torch.Tensor]:
    """Right-padded `trunk_hidden` (zeros on padding) and `trunk_pooled` for a training batch."""
    width = max(s.hidden.shape[0] for s in states)
    hidden = states[0].hidden.new_zeros((len(states), width, states[0].hidden.shape[1]))
    for i, s in enumerate(states):
        hidden[i, : s.hidden.shape[0]] = s.hidden
    return {"trunk_hidden": hidden, "trunk_pooled": torch.stack([s.pooled[pooling] for s in states])}
