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

Training: `cached_trunk` builds (main process) and loads (every process) the states of a run's
examples, after checking on one example that the cached path reproduces the full forward pass;
`training_batch` collates examples with their cached states and `model_inputs` passes them to the
model; `probe_init` warm-starts the head from a probe on what it reads (from the cache when it can).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .collate import Encoded, collate_train
from .errors import ClsgenError
from .files import atomic_write_json, cache_dir, writing
from .modes import eval_mode

if TYPE_CHECKING:
    from .config import Config
    from .model import DualHeadModel

log = logging.getLogger(__name__)

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
        with eval_mode(model):
            states = run_trunk(model, ids, mask, self.start)
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


# ----------------------------------------------------------------------------- training on the cached trunk


def training_batch(model: Any, enc: Sequence[Encoded], trunk: Sequence[Any] | None, indices: Sequence[int],
                   pad_id: int, device: torch.device, weights: Sequence[float] | None = None,
                   pos_weight: float | None = None) -> dict[str, torch.Tensor]:
    """A right-padded training batch, with the cached trunk's states when the model has a trunk and
    LM weights that give positive rows' verdict tokens `pos_weight`, as the head's BCE does."""
    rows = [enc[i] for i in indices]
    batch = collate_train(rows, pad_id, weights)
    if trunk is not None:
        batch.update(collate_trunk([trunk[i] for i in indices], _unwrap(model).head.pooling))
    if pos_weight is not None:
        lm_weights = torch.ones(batch["labels"].shape)
        for r, e in enumerate(rows):
            if e.label == 1 and e.verdict_at >= 0:
                lm_weights[r, e.verdict_at] = pos_weight
        batch["lm_weights"] = lm_weights
    return {k: v.to(device) for k, v in batch.items()}


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's states, the LM weights and the verdict positions of a batch (those it has)."""
    keys = ("trunk_hidden", "trunk_pooled", "lm_weights", "verdict_at", "verdict_ids")
    return {k: batch[k] for k in keys if k in batch}


def _unwrap(model: Any) -> DualHeadModel:
    return model.module if hasattr(model, "module") else model


def cached_trunk(accelerator: Any, model: DualHeadModel, tc: Any, enc: Sequence[Encoded],
                 dev_enc: Sequence[Encoded], progress: bool) -> tuple[list, list, dict[str, Any]]:
    """Build (main process) and load (every process) the frozen trunk's states of every example, after
    checking on one example that the cached path reproduces the full forward pass."""
    cache = TrunkCache(model, tc.cache_dir)
    info: dict[str, Any] = {"dir": str(cache.dir), "trunk_layers": cache.start}
    if accelerator.is_main_process:
        info.update(cache.build(list(enc) + list(dev_enc), batch_size=tc.batch_size * 2,
                                progress=progress))
        accelerator.print(f"trunk cache: layers 0-{cache.start - 1} of {len(enc) + len(dev_enc)} examples in "
                          f"{cache.dir} ({info['computed']} computed in {info['seconds']:.0f} s)")
    accelerator.wait_for_everyone()
    states, dev_states = cache.load(enc), cache.load(dev_enc)
    _check_trunk(model, enc, states)
    return states, dev_states, info


@torch.no_grad()
def _check_trunk(model: DualHeadModel, enc: Sequence[Encoded], states: Sequence[Any]) -> None:
    """The cached path must give the full pass's results: a model whose forward does more than run its
    layers in turn (e.g. scales its embeddings inside) is refused here rather than trained wrongly."""
    i = min(range(len(enc)), key=lambda j: len(enc[j]))
    batch = training_batch(model, enc, states, [i], model.tokenizer.pad_token_id, model.device)
    with eval_mode(model):
        full = model(batch["input_ids"], batch["attention_mask"], batch["cls_index"], lm_positions="all")
        cached = model(batch["input_ids"], batch["attention_mask"], batch["cls_index"], lm_positions="all",
                       **model_inputs(batch))
    scale = full.lm_logits.abs().max().clamp(min=1.0)
    error = float((full.lm_logits - cached.lm_logits).abs().max() / scale)
    tolerance = 1e-4 if batch["trunk_hidden"].dtype == torch.float32 else 5e-2
    if not error <= tolerance:
        raise ClsgenError(f"the cached trunk does not reproduce this model's forward pass (relative error "
                          f"{error:.2g}); set lora.top_layers and lora.layers to null for this base model")


@torch.no_grad()
def probe_init(model: DualHeadModel, enc: Sequence[Encoded], trunk: Sequence[Any] | None,
               dev_enc: Sequence[Encoded], dev_trunk: Sequence[Any] | None, pad_id: int, cfg: Config,
               pos_weight: float | None, progress: bool = False) -> dict[str, Any]:
    """head.init = probe: a logistic regression on what the head reads, before any training step
    (from the cache when the head reads the frozen trunk, else by a forward pass up to the head)."""
    from tqdm import tqdm

    from .head import fit_probe

    layers = model.head.read_layers()
    in_trunk = all(isinstance(layer, int) and layer <= model.trunk_layers for layer in layers)

    def pooled(rows: Sequence[Encoded], states: Sequence[Any] | None, split: str) -> np.ndarray:
        if states is not None and in_trunk:  # the head reads the frozen trunk only: the cache holds it
            return np.stack([s.pooled[model.head.pooling][layers].numpy() for s in states])
        out = []
        with tqdm(total=len(rows), desc=f"probe features ({split})", unit="ex", disable=not progress,
                  leave=False) as bar, torch.no_grad():
            for start in range(0, len(rows), cfg.eval.batch_size):
                idx = list(range(start, min(start + cfg.eval.batch_size, len(rows))))
                batch = training_batch(model, rows, states, idx, pad_id, model.device)
                result = model(batch["input_ids"], batch["attention_mask"], batch["cls_index"],
                               lm_positions="none", **model_inputs(batch))
                out.append(result.pooled.float().cpu().numpy())
                bar.update(len(idx))
        return np.concatenate(out)

    with eval_mode(model):
        started = time.perf_counter()
        x = pooled(enc, trunk, "train")
        xd = pooled(dev_enc, dev_trunk, "dev") if dev_enc else None
        info = fit_probe(model.head, x, [e.label for e in enc], xd, [e.label for e in dev_enc] or None,
                         balanced=pos_weight is not None)
    info["seconds"] = round(time.perf_counter() - started, 1)
    log.info("head warm-started from a probe: %s", info)
    return info
