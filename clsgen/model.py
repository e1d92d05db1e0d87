"""The dual-head model: a causal LM with LoRA (PEFT) and a classification head beside its LM head.

The head reads the prompt's hidden states (the last prompt token of the final layer by default; any
layer, pooled, see `head.py`), so the probability depends on the input alone and exists before any
explanation token is generated. One forward pass over prompt + explanation gives both losses;
positions come from the attention mask, so left padding, right padding and pad == eos all pool and
attend exactly as an unpadded single example would.

When LoRA covers only a band of layers [a, b) (`lora.top_layers` / `lora.layers`), the layers below
a are a frozen trunk: training feeds their cached output (`trunk.py`) and runs layers a..N-1 only.

A saved model's directory (file names, clsgen.json and its checks, the base model it names) is
`model_io.py`; `DualHeadModel.save_pretrained` and `load_pretrained` write and read it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .backbones import Backbone, load_model, prepare_tokenizer
from .card import write_model_card
from .collate import IGNORE_INDEX
from .config import HeadConfig, LoraConfig
from .errors import ClsgenError
from .files import atomic_dir
from .head import ClassificationHead, pool
from .model_io import (
    FORMAT_VERSION, HEAD_FILE, META_FILE, base_model_spec, check_weights_file, read_meta, recorded_spec, save_full,
)
from .task import Task


@dataclass
class DualHeadOutput:
    """What one forward pass returns."""

    cls_logits: torch.Tensor
    """(batch,) classification logits (float32)."""
    loss: torch.Tensor | None = None
    """w_cls * cls_loss + w_lm * lm_loss, when labels were given."""
    cls_loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None
    """LM logits at the requested positions (see `lm_positions`)."""
    past_key_values: Any = None
    lm_tokens: int = 0
    """Number of explanation tokens that carried LM loss."""
    pooled: torch.Tensor | None = None
    """(batch, k, hidden) what the head read, before standardisation (float32)."""
    verdict_logits: torch.Tensor | None = None
    """(batch,) the LM's teacher-forced verdict logit, log P(verbalizer 1) - log P(verbalizer 0) at
    the verdict position (NaN for rows without one), when `verdict_at` was given."""
    consistency_loss: torch.Tensor | None = None
    """Mean BCE(verdict logit, head probability detached) over rows with a verdict."""


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore padding on either side (0 for the first real token)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class DualHeadModel(nn.Module):
    """A PEFT-wrapped causal LM plus a classification head; composition, not inheritance."""

    def __init__(self, lm: nn.Module, head: ClassificationHead, tokenizer: Any, task: Task,
                 meta: dict[str, Any] | None = None):
        super().__init__()
        self.lm = lm
        self.head = head
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.task = task
        self.meta: dict[str, Any] = {"threshold": 0.5, "temperature": 1.0, **(meta or {})}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, backbone: Backbone, task: Task, lora: LoraConfig | None = None,
                      seed: int = 0, head: HeadConfig | None = None) -> DualHeadModel:
        """Wrap a base LM with fresh LoRA adapters (in the configured band of layers) and a fresh head."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        lora = lora or LoraConfig()
        head_cfg = head or HeadConfig()
        torch.manual_seed(seed)
        num_layers = backbone.model.config.num_hidden_layers
        start, stop = check_band(lora, head_cfg, num_layers, backbone.model.config)
        targets = lora.target_modules
        names = {n.split(".")[-1] for n, m in backbone.model.get_decoder().layers.named_modules()
                 if isinstance(m, nn.Linear)}
        if isinstance(targets, list):
            unknown = [t for t in targets if t not in names]
            if unknown:
                raise ClsgenError(f"lora.target_modules {unknown} do not exist in {backbone.spec}; "
                                  f"its linear layers are: {', '.join(sorted(names))} (or use 'all-linear')")
        band: dict[str, Any] = {}
        if (start, stop) != (0, num_layers):  # PEFT takes a band only with explicit module names
            band = {"layers_to_transform": list(range(start, stop)), "layers_pattern": "layers"}
            targets = sorted(names) if targets == "all-linear" else targets
        peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                  target_modules=targets, task_type="CAUSAL_LM", **band)
        try:
            with _quiet_peft():
                lm = get_peft_model(backbone.model, peft_cfg)
        except ValueError as e:
            raise ClsgenError(f"lora.target_modules={targets!r} cannot be applied: {e}") from None
        head_module = ClassificationHead(backbone.model.config.hidden_size, head_cfg.layer, head_cfg.pooling,
                                         num_layers)
        meta = {"base_model": recorded_spec(backbone.spec), "lora": dataclasses.asdict(lora),
                "dtype": str(next(backbone.model.parameters()).dtype).removeprefix("torch.")}
        return cls(lm, head_module, backbone.tokenizer, task, meta)

    # ------------------------------------------------------------------ parts
    @property
    def causal_lm(self) -> nn.Module:
        """The underlying *ForCausalLM (with LoRA layers injected when wrapped by PEFT)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def decoder(self) -> nn.Module:
        return self.causal_lm.get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.causal_lm.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return self.head.linear.weight.device

    @property
    def num_layers(self) -> int:
        return int(self.causal_lm.config.num_hidden_layers)

    @property
    def trunk_layers(self) -> int:
        """Decoder layers below the LoRA band: a frozen trunk whose output training may cache."""
        lora = self.meta.get("lora") or {}
        cfg = LoraConfig(**{k: v for k, v in lora.items() if k in LoraConfig.__dataclass_fields__})
        return cfg.band(self.num_layers)[0]

    @property
    def head_reads_trunk_only(self) -> bool:
        """Whether every layer the head reads lies in the frozen trunk (a cache holds its pooled states)."""
        start = self.trunk_layers
        return start > 0 and all(layer is not None and layer < start for layer in self.head.read_layers())

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cls_index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cls_labels: torch.Tensor | None = None,
        *,
        w_cls: float = 1.0,
        w_lm: float = 1.0,
        pos_weight: float | None = None,
        lm_positions: Literal["labels", "last", "all", "none"] = "labels",
        past_key_values: Any = None,
        use_cache: bool = False,
        trunk_hidden: torch.Tensor | None = None,
        trunk_pooled: torch.Tensor | None = None,
        lm_weights: torch.Tensor | None = None,
        verdict_at: torch.Tensor | None = None,
        verdict_ids: torch.Tensor | None = None,
        w_consistency: float = 0.0,
    ) -> DualHeadOutput:
        """One pass over prompt (+ explanation).

        cls_index: (batch,) index of the last prompt token per row (default: the last position).
        labels: (batch, seq) next-token targets aligned with input_ids (IGNORE_INDEX on prompt,
            padding and examples without an explanation); the shift happens here.
        cls_labels: (batch,) 0/1 float targets for the head.
        lm_positions: where LM logits are computed: only where labels need them (training), at the
            last position (generation), everywhere, or nowhere (scoring).
        trunk_hidden: (batch, seq, hidden) the frozen trunk's output (the hidden states entering layer
            `trunk_layers`), e.g. from the trunk cache: only the layers above it run.
        trunk_pooled: (batch, trunk_layers + 1, hidden) the trunk layers' pooled states (the head's
            pooling), needed with `trunk_hidden` when the head reads a trunk layer.
        lm_weights: (batch, seq) weight of each target in `labels` (e.g. pos_weight on a positive
            row's verdict token); the LM loss is the weighted sum over the number of targets.
        verdict_at, verdict_ids: (batch,) index of the verdict token (-1: none) and (batch, 2) its
            label-0 / label-1 token ids: gives `verdict_logits`, and with `w_consistency` > 0 the
            consistency term BCE(verdict logit, head probability), whose gradient reaches the LM only.
        """
        if cls_index is None:
            cls_index = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        position_ids = positions_from_mask(attention_mask)[:, past_len:]
        cache_kw = _cache_argument(self.decoder)
        start = self.trunk_layers if trunk_hidden is not None else 0
        head_reads = self.head.read_layers() if past_len == 0 else []
        final = self.num_layers
        live = {layer for layer in head_reads if layer is not None and start <= layer < final}
        pooled_in_trunk = {layer for layer in head_reads if layer is not None and layer < start} \
            if trunk_pooled is not None else set()
        if trunk_hidden is not None and start == 0:
            raise ClsgenError("trunk_hidden given, but this model has no frozen trunk (LoRA in every layer)")
        inputs = {"inputs_embeds": trunk_hidden} if trunk_hidden is not None else {"input_ids": input_ids}
        # the head alone is wanted and reads below the top: the layers above what it reads are skipped
        # (all of them when it reads the cached trunk only)
        head_only = (lm_positions == "none" and labels is None and verdict_at is None and not use_cache
                     and bool(head_reads) and len(live) + len(pooled_in_trunk) == len(head_reads))
        out, captured = None, {}
        if not (head_only and not live):
            with _capture_layers(self.decoder, live) as captured, \
                    _stop_after(self.decoder, max(live) if head_only else None), _layers_from(self.decoder, start):
                try:
                    out = self.decoder(attention_mask=attention_mask, position_ids=position_ids,
                                       use_cache=use_cache, **inputs, **{cache_kw: past_key_values})
                except _HeadRead:
                    out = None
        hidden = out.last_hidden_state if out is not None else None
        if head_reads:
            states = []
            for layer in head_reads:
                if layer is None or layer == final:  # transformers' hidden_states[N]: after the final norm
                    states.append(pool(hidden, attention_mask, cls_index, self.head.pooling))
                elif layer in captured:
                    states.append(pool(captured[layer], attention_mask, cls_index, self.head.pooling))
                elif trunk_pooled is not None:
                    states.append(trunk_pooled[:, layer].float())
                else:
                    raise ClsgenError(f"the head reads layer {layer}, inside the frozen trunk: pass trunk_pooled")
            pooled = torch.stack(states, dim=1)
            cls_logits = self.head(pooled)
        else:  # a decoding step: the probability came from the prefill
            pooled = None
            cls_logits = hidden.new_full((hidden.shape[0],), float("nan"), dtype=torch.float32)
        cache = out.get(cache_kw) if use_cache and out is not None else None
        result = DualHeadOutput(cls_logits=cls_logits, past_key_values=cache, pooled=pooled)

        if lm_positions == "all":
            result.lm_logits = self.lm_head(hidden).float()
        elif lm_positions == "last":
            result.lm_logits = self.lm_head(hidden[:, -1:]).float()

        losses = []
        if cls_labels is not None and w_cls > 0:
            pw = None if pos_weight is None else torch.tensor(pos_weight, device=cls_logits.device)
            result.cls_loss = F.binary_cross_entropy_with_logits(cls_logits, cls_labels.float(), pos_weight=pw)
            losses.append(w_cls * result.cls_loss)
        if labels is not None and w_lm > 0:
            targets = labels[:, 1:]
            where = targets != IGNORE_INDEX
            result.lm_tokens = int(where.sum())
            if result.lm_tokens:  # logits only where a target exists: the LM head is costly
                logits = self.lm_head(hidden[:, :-1][where]).float()
                ce = F.cross_entropy(logits, targets[where], reduction="none")
                if lm_weights is not None:
                    ce = ce * lm_weights[:, 1:][where].float()
                result.lm_loss = ce.sum() / result.lm_tokens
            else:
                result.lm_loss = hidden.sum() * 0.0  # keeps the graph for every process
            losses.append(w_lm * result.lm_loss)
        if verdict_at is not None and verdict_ids is not None:
            result.verdict_logits = self._verdict_logits(hidden, verdict_at, verdict_ids)
            has = verdict_at >= 0
            if w_consistency > 0 and bool(has.any()):
                target = torch.sigmoid(cls_logits.detach().float())[has]
                result.consistency_loss = F.binary_cross_entropy_with_logits(result.verdict_logits[has], target)
                losses.append(w_consistency * result.consistency_loss)
        if losses:
            result.loss = torch.stack(losses).sum()
        return result

    def _verdict_logits(self, hidden: torch.Tensor, verdict_at: torch.Tensor, verdict_ids: torch.Tensor
                        ) -> torch.Tensor:
        """log P(label-1 token) - log P(label-0 token) where the verdict is predicted (teacher-forced)."""
        out = hidden.new_full((hidden.shape[0],), float("nan"), dtype=torch.float32)
        rows = torch.nonzero(verdict_at >= 0).squeeze(-1)
        if rows.numel():
            logits = self.lm_head(hidden[rows, verdict_at[rows] - 1]).float()
            picked = logits.gather(1, verdict_ids[rows])
            out = out.index_put((rows,), picked[:, 1] - picked[:, 0])
        return out

    @torch.no_grad()
    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """sigmoid(logit / T) with the stored temperature (T = 1 when not calibrated)."""
        t = float(self.meta.get("temperature", 1.0)) if calibrated else 1.0
        return torch.sigmoid(logits.float() / t)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write adapter (PEFT format), head (safetensors), tokenizer and clsgen.json, atomically.

        `state_dict` (keys as in `self.state_dict()`): weights to write instead of the live ones, e.g.
        gathered by accelerate from FSDP / ZeRO-3 shards.
        """
        from safetensors.torch import save_file

        path = Path(path)
        head_state = self.head.state_dict()
        if state_dict is not None:
            head_state = {k[len("head."):]: v for k, v in state_dict.items() if k.startswith("head.")}
        with atomic_dir(path) as tmp:
            if hasattr(self.lm, "peft_config"):
                kw = {} if state_dict is None else {
                    "state_dict": {k[len("lm."):]: v for k, v in state_dict.items() if k.startswith("lm.")}}
                self.lm.save_pretrained(str(tmp), **kw)
            else:  # merged: the full model
                save_full(self.lm, tmp)
            save_file({k: v.detach().cpu().contiguous() for k, v in head_state.items()},
                      str(tmp / HEAD_FILE))
            self.tokenizer.save_pretrained(str(tmp))
            meta = {**self.meta, "format": FORMAT_VERSION, "clsgen_version": __version__,
                    "task": dataclasses.asdict(self.task), "hidden_size": self.head.hidden_size,
                    "head": self.head.settings()}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            write_model_card(tmp)  # README.md; adapter_config.json names the public base id
        return path

    def export_merged(self, path: str | Path) -> Path:
        """Write a merged full model (LoRA folded into the weights) plus head: loads without PEFT."""
        merged = self.lm.merge_and_unload() if hasattr(self.lm, "merge_and_unload") else self.lm
        out = DualHeadModel(merged, self.head, self.tokenizer, self.task, {**self.meta, "merged": True})
        out.meta["base_model"] = "."
        out.save_pretrained(path)
        if merged is not self.lm:  # merge_and_unload changed our LM in place: wrap it back
            self.lm = merged
        return Path(path)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Silence a deprecation warning that PEFT triggers inside transformers on every wrap."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def check_band(lora: LoraConfig, head: HeadConfig, num_layers: int, config: Any) -> tuple[int, int]:
    """The LoRA band [a, b) of a model with `num_layers` layers; refuses settings that cannot work."""
    start, stop = lora.band(num_layers)
    if lora.top_layers is not None and lora.top_layers >= num_layers:
        raise ClsgenError(f"lora.top_layers={lora.top_layers} leaves no frozen trunk in a model of {num_layers} "
                          f"layers; set it below {num_layers}, or null to put LoRA in every layer")
    if stop > num_layers:
        raise ClsgenError(f"lora.layers={lora.layers} reaches past the model's {num_layers} layers; "
                          f"use a band inside [0, {num_layers}]")
    if isinstance(head.layer, int) and head.layer > num_layers:
        raise ClsgenError(f"head.layer={head.layer} is past the model's {num_layers} layers; use 0..{num_layers}, "
                          "'mix' or null (the final layer)")
    if start > 0:
        dropout = {k: getattr(config, k) for k in ("attention_dropout", "hidden_dropout", "dropout",
                                                   "resid_pdrop", "embd_pdrop", "attn_pdrop")
                   if isinstance(getattr(config, k, None), (int, float)) and getattr(config, k) > 0}
        if dropout:
            raise ClsgenError(f"the base model has dropout ({dropout}), so its frozen layers are not "
                              "deterministic and their cached output would differ from training's; set "
                              "lora.top_layers and lora.layers to null (LoRA in every layer)")
    return start, stop


@contextlib.contextmanager
def _layers_from(decoder: nn.Module, start: int) -> Iterator[None]:
    """Run the decoder's layers from `start` only: its forward then takes the trunk's output as
    `inputs_embeds` and computes positions, masks and the final norm exactly as a full pass does."""
    if start == 0:
        yield
        return
    full = decoder.layers
    decoder.layers = nn.ModuleList(list(full)[start:])
    try:
        yield
    finally:
        decoder.layers = full


class _HeadRead(Exception):
    """Raised on entering the layer above the last one the head reads, when nothing else is wanted."""


@contextlib.contextmanager
def _stop_after(decoder: nn.Module, layer: int | None) -> Iterator[None]:
    """Stop the decoder's forward on entering decoder layer `layer` (its input, captured by an earlier
    hook, is the last state needed); no-op for None."""
    if layer is None:
        yield
        return

    def stop(module: nn.Module, args: tuple) -> None:
        raise _HeadRead

    hook = list(decoder.layers)[layer].register_forward_pre_hook(stop)
    try:
        yield
    finally:
        hook.remove()


@contextlib.contextmanager
def _capture_layers(decoder: nn.Module, wanted: set[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream after L decoder layers for each L < num_layers in `wanted` (L = 0:
    the embeddings), i.e. the input of layer L: transformers' `hidden_states[L]`."""
    captured: dict[int, torch.Tensor] = {}
    layers = list(decoder.layers)
    hooks = []

    def keep_input(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured[layer] = args[0] if args else kwargs["hidden_states"]
        return hook

    for layer in sorted(wanted):
        hooks.append(layers[layer].register_forward_pre_hook(keep_input(layer), with_kwargs=True))
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()


def _cache_argument(decoder: nn.Module) -> str:
    """The decoder's name for the KV cache argument ('cache' in newer transformers)."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def load_pretrained(path: str | Path, dtype: str | torch.dtype | None = None,
                    trust_remote_code: bool = False, base_model: str | None = None) -> DualHeadModel:
    """Restore a saved model; its outputs equal the saved one's.

    A model directory is data: weights load through safetensors only (a directory with pickled
    weights only is refused), no code in it runs unless `trust_remote_code=True`, and the paths it
    names stay inside it (see `base_model_spec`, `backbones.check_model_dir`). `base_model` (the
    caller's choice, e.g. after moving a local base model) overrides clsgen.json's `base_model`.
    """
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .backbones import check_model_dir, remote_code_error, resolve_dtype

    path = Path(path)
    meta = read_meta(path)
    try:
        task = Task(**{**meta["task"], "verbalizers": tuple(meta["task"]["verbalizers"])})
    except (KeyError, TypeError) as e:
        raise ClsgenError(f"{path / META_FILE} has no valid task ({type(e).__name__}: {e}); re-save the "
                          "model") from None
    dtype = dtype or meta.get("dtype", "auto")
    check_model_dir(path, weights=bool(meta.get("merged")))
    for weights in sorted(path.glob("*.safetensors")):
        check_weights_file(weights)
    remote = bool(trust_remote_code)  # never None: transformers would ask on stdin
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=remote)
        if meta.get("merged"):
            lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype),
                                                      use_safetensors=True, trust_remote_code=remote)
        else:
            from peft import PeftModel

            if not (path / "adapter_model.safetensors").is_file():
                pickled = [n for n in ("adapter_model.bin", "adapter_model.pt") if (path / n).is_file()]
                raise ClsgenError(f"{path} has no adapter_model.safetensors" + (
                    f" (only the pickled {pickled[0]}, which clsgen never unpickles: a pickle can run any "
                    "code)" if pickled else "") + "; re-save the model with clsgen")
            spec = base_model or base_model_spec(meta, path)
            backbone = load_model(spec, dtype=dtype, trust_remote_code=remote)
            with _quiet_peft():
                lm = PeftModel.from_pretrained(backbone.model, str(path))
    except ValueError as e:
        if "trust_remote_code" in str(e) or "custom code" in str(e):
            raise remote_code_error(str(path)) from None
        raise
    except OSError as e:
        raise ClsgenError(f"cannot load {path}: {str(e).splitlines()[0]}") from None
    head_file = path / HEAD_FILE
    if not head_file.is_file():
        raise ClsgenError(f"{path} has no {HEAD_FILE}: the classification head is missing, so the "
                          "probabilities would be random; re-save the model")
    head = ClassificationHead(meta["hidden_size"], **(meta.get("head") or {}))
    try:
        head.load_state_dict(load_file(str(head_file)))
    except RuntimeError as e:  # missing, unexpected or wrongly shaped tensors
        raise ClsgenError(f"{head_file} does not fit this model ({str(e).splitlines()[-1].strip()}); "
                          "re-save the model") from None
    _check_finite(head_file, head.named_parameters())
    if not meta.get("merged"):
        _check_finite(path / "adapter_model.safetensors",
                      ((n, p) for n, p in lm.named_parameters() if "lora_" in n))
    model = DualHeadModel(lm, head, tokenizer, task, meta)
    return model.eval()


def _check_finite(file: Path, params: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Refuse weights holding NaN or infinity: every probability would be NaN."""
    for name, p in params:
        if not torch.isfinite(p).all():
            raise ClsgenError(f"{file} holds NaN or infinite weights ({name}); re-save or retrain the model")
