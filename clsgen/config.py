"""Typed configuration: dataclasses with CPU-friendly defaults, loaded from YAML, overridden by flags.

`load_config(path, overrides)` reads a YAML file (optional), applies `section.key=value` overrides and
checks everything at once: unknown keys, wrong types and values that cannot work are reported
together, each naming its key, as a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .data import short_repr
from .errors import ConfigError, Problem


@dataclass
class ModelConfig:
    """Which base causal LM to start from."""

    name: str = "smollm2-135m"
    """'smollm2-135m' (embedded default), a local HF model directory, a hub id, or 'tiny' (random, tests)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; 'auto' is bfloat16 where the hardware computes it natively (GPUs, CPUs with
    AVX-512 BF16 or AMX), else float32 (an AVX2 CPU emulates bfloat16, ~50x slower)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hub ids."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run. Off unless you trust the repository."""


@dataclass
class LoraConfig:
    """LoRA adapter settings (PEFT)."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: int = 32
    """Scaling numerator (update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input (0 on CPU: measured ~30% faster and 3 GB lighter; 0.05 on GPUs)."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or 'all-linear' for every linear layer except the LM head."""
    top_layers: int | None = None
    """LoRA in the top K decoder layers only; the frozen layers below run once per example and their
    output is cached on disk (see docs/training.md). None: all layers (the GPU configs)."""
    layers: list[int] | None = None
    """LoRA in the band of decoder layers [a, b) only: the layers below a are a cached frozen trunk,
    the layers from b up stay frozen but still run (the LM loss flows through them). Excludes
    top_layers (which is the band [N - K, N))."""

    def band(self, num_layers: int) -> tuple[int, int]:
        """The decoder layers [a, b) that hold LoRA in a model of `num_layers` layers."""
        if self.layers is not None:
            return self.layers[0], self.layers[1]
        if self.top_layers is not None:
            return num_layers - self.top_layers, num_layers
        return 0, num_layers


@dataclass
class HeadConfig:
    """Where the classification head reads and how it starts."""

    layer: int | Literal["mix"] | None = None
    """Which hidden states the head reads: None = the final (normed) layer; L = transformers'
    hidden_states[L], the residual stream after L decoder layers (0 = the embeddings, N = the final
    normed layer); 'mix' = a learned softmax-weighted mix of every layer's pooled states."""
    pooling: Literal["last", "mean"] = "last"
    """'last' = the last prompt token; 'mean' = the masked mean over the prompt tokens."""
    init: Literal["random", "probe"] = "random"
    """'random' = small random weights (not zero: a zero head passes no gradient to LoRA at first);
    'probe' = standardise the features and warm-start from a logistic regression on the training
    rows' features of the model before training (C, and a mix's starting layer, chosen by 5-fold
    cross-validation on the training rows)."""


@dataclass
class TaskConfig:
    """Overrides of the dataset's task; fields left None keep the dataset's default."""

    system: str | None = None
    """System instruction."""
    template: str | None = None
    """User message template over example fields, e.g. 'Claim: {claim}\\nAbstract: {abstract}'."""
    verbalizers: list[str] | None = None
    """Words for label 0 and label 1 used in the verdict line 'Answer: <word>'."""
    max_prompt_tokens: int | None = None
    """Longest rendered prompt (None: the dataset's, 768 unless it says otherwise); long text fields are
    truncated inside, never the instruction."""
    truncation: Literal["head", "tail", "head+tail"] | None = None
    """Which part of a long text field is kept: its head, its tail, or both ends (None: the dataset's,
    'head+tail' unless it says otherwise)."""
    verdict_position: Literal["first", "last"] | None = None
    """Where the trained assistant turn states 'Answer: <verbalizer>': 'last' (after the explanation,
    the default) or 'first' (before it, so the explanation argues for the stated verdict and the
    verdict is scored in one pass)."""


@dataclass
class DataConfig:
    """Where the examples come from."""

    dataset: str = "clinifact"
    """A built-in dataset ('clinifact', 'pubmedqa', 'lcd') or a path to a JSONL/CSV/Parquet file."""
    data_dir: str | None = None
    """Directory holding built-in datasets (also CLSGEN_DATA_DIR); else a user cache, else download."""
    binarization: str | None = None
    """Built-in label mapping, e.g. clinifact 'evidence-vs-rest' (default) or 'evidence-vs-inconclusive'."""
    split: Literal["official", "trial-disjoint"] = "official"
    """'official' splits, or (clinifact) a re-split with no trial (nctId) shared between splits."""
    text_fields: list[str] | None = None
    """For a file: the text fields the task template uses (default: the template's fields)."""
    id_field: str | None = "id"
    """For a file: the unique id column (None: row numbers)."""
    label_field: str = "label"
    """For a file: the label column."""
    label_map: dict[str, int] | None = None
    """For a file: raw label value (as text) -> 0/1; default accepts 0/1, true/false, yes/no."""
    max_train: int | None = None
    """Use at most this many training examples (stratified sample; None = all)."""
    max_eval: int | None = None
    """Use at most this many validation/test examples each (stratified sample; None = all)."""
    max_validation: int | None = None
    """Use at most this many validation examples (stratified; None = max_eval): a smaller dev split
    keeps calibration cheap while the test split stays complete."""
    seed: int = 0
    """Seed for subsampling and re-splitting."""
    train_file: str | None = None
    """`clsgen train`'s training records (the synth JSONL, or a data file of examples); `--data` wins."""
    dev_file: str | None = None
    """`clsgen train`'s dev examples (default: the dataset's validation split); `--dev` wins."""


@dataclass
class TrainConfig:
    """Joint training of the classification head and the LM head."""

    w_cls: float = 1.0
    """Weight of the classification (BCE) loss; 0 gives the generation-only baseline."""
    w_lm: float = 1.0
    """Weight of the explanation LM loss; 0 gives the classification-only baseline."""
    w_consistency: float = 0.0
    """Weight of BCE(LM verdict probability, head probability detached): ties the verdict the
    explanation states to the head; its gradient reaches the LM side only."""
    pos_weight: float | Literal["auto"] | None = "auto"
    """BCE weight of positives, also on positive rows' verdict tokens in the LM loss; 'auto' =
    negatives/positives in the training data; None = 1."""
    verdict_only: bool = True
    """Rows without an accepted explanation train on the verdict line alone (else the head only)."""
    lr: float = 2e-4
    """Peak learning rate of the LoRA parameters."""
    head_lr: float = 1e-3
    """Peak learning rate of the classification head."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = 4
    """Examples per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    warmup_ratio: float = 0.05
    """Share of steps with linear warm-up."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    max_length: int = 1024
    """Longest prompt + explanation in tokens; explanations are cut to fit."""
    group_by_length: bool = True
    """Batch examples of similar length to limit padding."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """accelerate mixed precision for the trainable parameters."""
    seed: int = 0
    """Seed for initialisation, shuffling and dropout."""
    eval_every: int | None = None
    """Evaluate on the dev split every N steps (None: each epoch end)."""
    save_every: int = 50
    """Write a resumable checkpoint every N optimizer steps."""
    early_stopping: int | None = None
    """Stop after this many evaluations that keep no model (see select_tolerance; None: never)."""
    select_tolerance: float = 0.005
    """A later evaluation whose dev AUROC is within this of the best so far replaces the kept model:
    the head's dev AUROC plateaus while the LM side still learns (CliniFact, head on a frozen layer:
    dev AUROC 0.8178 / 0.8187 / 0.8186 at steps 40 / 80 / 120 while the LM's verdict agreement with
    the head rose 0.58 / 0.65 / 0.76). 0: keep only strict improvements."""
    log_with: list[str] = field(default_factory=list)
    """accelerate trackers: 'tensorboard', 'wandb', 'mlflow' (when installed)."""
    log_every: int = 10
    """Write a metrics record (train_log.jsonl, trackers, progress bar) every N optimizer steps."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept besides the best model (the oldest are deleted)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory (long inputs, 8B models), ~30% slower."""
    cache_dir: str | None = None
    """Where the frozen trunk's hidden states are cached when LoRA covers a band of layers (None: the
    user cache, ~/.cache/clsgen/trunk). Entries are keyed by model, dtype, layer and token ids, so
    runs and methods share them safely."""


@dataclass
class TeacherConfig:
    """The model that writes label-conditioned explanations (clsgen synth)."""

    kind: Literal["local", "openai", "reference"] = "local"
    """'local' HF model, 'openai' (any OpenAI-compatible server) or 'reference' (a rationale field)."""
    model: str = "smollm2-135m"
    """Local model spec, or the served model's name for 'openai'."""
    base_url: str | None = None
    """OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str | None = None
    """Environment variable holding the API key (the key itself never goes in a config)."""
    reference_field: str | None = None
    """For 'reference': the example field holding the rationale (pubmedqa: 'long_answer')."""
    prompt: str | None = None
    """Instruction for the teacher; None uses the built-in label-conditioned prompt."""
    temperature: float = 0.7
    """Sampling temperature for retries (the first attempt is greedy for local teachers)."""
    max_new_tokens: int = 256
    """Longest explanation the teacher may write."""
    max_attempts: int = 3
    """Tries per example before it is kept with explanation null."""
    class_attempts: list[int] | None = None
    """Tries per example for label 0 and label 1 (overrides max_attempts), e.g. [2, 6] to retry the
    class the teacher finds harder to explain more often."""
    batch_size: int = 8
    """Local teacher: prompts generated together."""
    concurrency: int = 4
    """OpenAI-compatible teacher: requests in flight."""
    timeout: float = 60.0
    """Seconds per request."""
    max_retries: int = 5
    """Retries of one request on 429/5xx/connection errors, with exponential backoff."""
    demos: bool = True
    """Show the teacher the task's built-in worked examples (clinifact, pubmedqa) before each example."""


@dataclass
class EvalConfig:
    """Evaluation, threshold and calibration."""

    threshold: Literal["max_f1", "youden", "fixed"] = "max_f1"
    """How the decision threshold is chosen on the dev split."""
    fixed_threshold: float = 0.5
    """Threshold used when threshold == 'fixed'."""
    calibrate: bool = True
    """Fit temperature scaling on the dev split."""
    explain: int | None = None
    """Generate explanations for at most this many test rows (None: all)."""
    max_new_tokens: int = 256
    """Longest generated explanation."""
    batch_size: int = 8
    """Examples per forward pass."""
    n_bootstrap: int = 1000
    """Bootstrap resamples for 95% intervals."""


@dataclass
class ExperimentConfig:
    """The whole comparison: which methods run and where the results go."""

    methods: list[str] = field(default_factory=lambda: [
        "clsgen", "clsgen+consistency", "clsgen+head-verdict", "classification-only", "generation-only", "prompting",
        "cnn", "tfidf"])
    """Methods to train and evaluate on the same test split, in table order."""
    out_dir: str = "runs/experiment"
    """Folder for every step's outputs; a rerun continues where the last one stopped."""
    title: str | None = None
    """Title of the results table and report."""
    synth_splits: list[str] = field(default_factory=lambda: ["train"])
    """Splits the teacher explains (training uses them; dev only selects and calibrates)."""
    explanations: str | None = None
    """A teacher-explanation file made once (`clsgen synth` output, records {id, explanation}, or
    `clsgen:NAME` for one shipped with clsgen): joined by id to the training split instead of running
    the teacher."""


@dataclass
class Config:
    """Everything a run needs; each section has CPU-friendly defaults."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    output_dir: str | None = None
    """`clsgen train`'s output folder (the saved model, logs, checkpoints); `--out` wins."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as nested dicts; the paths above appear only when set (a run's results do not
        depend on where its files live)."""
        d = dataclasses.asdict(self)
        for section, key in PATH_SETTINGS:
            node = d if section is None else d[section]
            if node.get(key) is None:
                node.pop(key, None)
        return d

    def validate(self) -> list[Problem]:
        """Values that cannot work, found before any expensive step."""
        p: list[Problem] = []
        t = self.train
        if t.w_cls == 0 and t.w_lm == 0:
            p.append(Problem("both loss weights are 0: nothing would be trained; set train.w_cls or "
                             "train.w_lm above 0", field="train.w_cls"))
        for name in ("w_cls", "w_lm", "w_consistency", "lr", "head_lr", "weight_decay", "select_tolerance"):
            if getattr(t, name) < 0:
                p.append(Problem(f"must be >= 0, got {getattr(t, name)}", field=f"train.{name}"))
        for name in ("batch_size", "grad_accum", "max_length", "save_every"):
            if getattr(t, name) < 1:
                p.append(Problem(f"must be >= 1, got {getattr(t, name)}", field=f"train.{name}"))
        if not 0 <= t.warmup_ratio < 1:
            p.append(Problem(f"must be in [0, 1), got {t.warmup_ratio}", field="train.warmup_ratio"))
        if isinstance(t.pos_weight, float) and t.pos_weight <= 0:
            p.append(Problem(f"must be > 0, got {t.pos_weight}", field="train.pos_weight"))
        if self.lora.r < 1:
            p.append(Problem(f"must be >= 1, got {self.lora.r}", field="lora.r"))
        lo = self.lora
        if lo.top_layers is not None and lo.layers is not None:
            p.append(Problem("give lora.top_layers or lora.layers, not both", field="lora.layers"))
        if lo.top_layers is not None and lo.top_layers < 1:
            p.append(Problem(f"must be >= 1 (or null for all layers), got {lo.top_layers}", field="lora.top_layers"))
        if lo.layers is not None and (len(lo.layers) != 2 or not 0 <= lo.layers[0] < lo.layers[1]):
            p.append(Problem(f"must be [a, b] with 0 <= a < b (LoRA in decoder layers a..b-1), got {lo.layers}",
                             field="lora.layers"))
        if isinstance(self.head.layer, int) and self.head.layer < 0:
            p.append(Problem(f"must be >= 0 (a layer count), 'mix' or null, got {self.head.layer}",
                             field="head.layer"))
        if not 0 <= self.lora.dropout < 1:
            p.append(Problem(f"must be in [0, 1), got {self.lora.dropout}", field="lora.dropout"))
        if self.task.max_prompt_tokens is not None and self.task.max_prompt_tokens < 16:
            p.append(Problem(f"must be >= 16, got {self.task.max_prompt_tokens}",
                             field="task.max_prompt_tokens"))
        if self.task.verbalizers is not None and (
            len(self.task.verbalizers) != 2 or len({v.strip().lower() for v in self.task.verbalizers}) != 2
            or not all(v.strip() for v in self.task.verbalizers)
        ):
            p.append(Problem(f"need two different non-empty words (label 0, label 1), got "
                             f"{self.task.verbalizers!r}", field="task.verbalizers"))
        bad_labels = {k: v for k, v in (self.data.label_map or {}).items() if v not in (0, 1)}
        if bad_labels:
            p.append(Problem(f"must map labels to 0 or 1, got {_short_repr(bad_labels)}",
                             field="data.label_map"))
        elif self.data.label_map and len(set(self.data.label_map.values())) < 2:
            p.append(Problem(f"maps every label to {next(iter(self.data.label_map.values()))}, so one class would "
                             f"be empty; map some labels to 0 and some to 1", field="data.label_map"))
        if self.task.template is not None and not _template_fields(self.task.template):
            p.append(Problem(f"uses no field, so every prompt would be the same; name a field of the data in "
                             f"braces, e.g. 'Note: {{text}}', got {_short_repr(self.task.template)}",
                             field="task.template"))
        for name in ("max_train", "max_eval", "max_validation"):
            value = getattr(self.data, name)
            if value is not None and value < 1:
                p.append(Problem(f"must be >= 1 (or null for all examples), got {value}", field=f"data.{name}"))
        if t.max_steps is not None and t.max_steps < 1:
            p.append(Problem(f"must be >= 1 (or null to train train.epochs), got {t.max_steps}",
                             field="train.max_steps"))
        if not (math.isfinite(t.epochs) and t.epochs > 0):
            p.append(Problem(f"must be > 0, got {t.epochs}", field="train.epochs"))
        if self.teacher.max_attempts < 1:
            p.append(Problem("must be >= 1", field="teacher.max_attempts"))
        ca = self.teacher.class_attempts
        if ca is not None and (len(ca) != 2 or min(ca) < 1):
            p.append(Problem(f"must be two counts >= 1 (label 0, label 1), got {ca}", field="teacher.class_attempts"))
        for name, low in (("batch_size", 1), ("max_new_tokens", 0), ("n_bootstrap", 0)):
            if getattr(self.eval, name) < low:
                p.append(Problem(f"must be >= {low}, got {getattr(self.eval, name)}", field=f"eval.{name}"))
        if not 0 <= self.eval.fixed_threshold <= 1:
            p.append(Problem("must be in [0, 1]", field="eval.fixed_threshold"))
        return p


PATH_SETTINGS = ((None, "output_dir"), ("data", "train_file"), ("data", "dev_file"))
"""Where a run's files are: kept out of `Config.to_dict` while unset."""

# ----------------------------------------------------------------------------- familiar names

ALIASES: dict[str, tuple[str, ...]] = {
    # setting: the names Trainer / TRL / PEFT / LLaMA-Factory users type for it
    "model.name": ("model_name_or_path", "model_name"),
    "model.dtype": ("torch_dtype",),
    "model.trust_remote_code": ("trust_remote_code",),
    "lora.r": ("lora_rank", "lora_r"),
    "lora.alpha": ("lora_alpha",),
    "lora.dropout": ("lora_dropout",),
    "lora.target_modules": ("lora_target", "lora_target_modules"),
    "data.dataset": ("dataset", "dataset_name"),
    "data.data_dir": ("dataset_dir",),
    "data.train_file": ("train_file",),
    "data.dev_file": ("validation_file", "eval_file", "dev_file"),
    "data.max_train": ("max_train_samples", "max_samples"),
    "data.max_eval": ("max_eval_samples",),
    "train.lr": ("learning_rate",),
    "train.grad_accum": ("gradient_accumulation_steps",),
    "train.batch_size": ("per_device_train_batch_size", "batch_size"),
    "train.epochs": ("num_train_epochs",),
    "train.max_steps": ("max_steps",),
    "train.warmup_ratio": ("warmup_ratio",),
    "train.weight_decay": ("weight_decay",),
    "train.max_grad_norm": ("max_grad_norm",),
    "train.seed": ("seed",),
    "train.schedule": ("lr_scheduler_type",),
    "train.max_length": ("max_length", "max_seq_length", "cutoff_len"),
    "train.log_with": ("report_to",),
    "train.log_every": ("logging_steps",),
    "train.save_every": ("save_steps",),
    "train.eval_every": ("eval_steps",),
    "train.keep_checkpoints": ("save_total_limit",),
    "train.gradient_checkpointing": ("gradient_checkpointing",),
    "eval.batch_size": ("per_device_eval_batch_size",),
}
"""Canonical setting -> its aliases. An alias is accepted at the top level of a config (as in a
Trainer / LLaMA-Factory YAML: `learning_rate: 1e-4`) and inside the setting's section
(`train.learning_rate`); an alias and its setting (or two aliases of one setting) given together are
an error naming both. Top-level `output_dir` is itself a setting."""


def _alias_table() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    flat: dict[str, str] = {}
    sectioned: dict[tuple[str, str], str] = {}
    for canonical, aliases in ALIASES.items():
        section, key = canonical.split(".")
        for alias in aliases:
            if alias not in {f.name for f in dataclasses.fields(Config)}:
                flat.setdefault(alias, canonical)
            if alias != key:
                sectioned[(section, alias)] = canonical
    return flat, sectioned


def canonical_key(keys: list[str]) -> list[str]:
    """['learning_rate'] or ['train', 'learning_rate'] -> ['train', 'lr']; other keys unchanged."""
    flat, sectioned = _alias_table()
    if len(keys) == 1 and keys[0] in flat:
        return flat[keys[0]].split(".")
    if len(keys) == 2 and (keys[0], keys[1]) in sectioned:
        return sectioned[(keys[0], keys[1])].split(".")
    return keys


def resolve_aliases(data: Any, source: str = "config") -> Any:
    """A copy of a config mapping with every alias moved to its canonical setting; a `ConfigError`
    when an alias and its setting, or two aliases of one setting, are both given."""
    if not isinstance(data, dict):
        return data
    out: dict[Any, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    given: dict[str, list[str]] = {}  # canonical -> the spellings that set it
    moves: list[tuple[tuple[Any, ...], list[str]]] = []
    for key, value in data.items():
        if not isinstance(key, str):
            continue
        target = canonical_key([key])
        if target != [key]:
            moves.append(((key,), target))
        elif isinstance(value, dict):
            for sub in value:
                if isinstance(sub, str):
                    target = canonical_key([key, sub])
                    if target != [key, sub]:
                        moves.append(((key, sub), target))
                    else:
                        given.setdefault(f"{key}.{sub}", []).append(f"{key}.{sub}")
    problems: list[Problem] = []
    for where, target in moves:
        spelled = ".".join(where)
        canonical = ".".join(target)
        given.setdefault(canonical, []).append(spelled)
        value = out.pop(where[0]) if len(where) == 1 else out[where[0]].pop(where[1])
        section = out.setdefault(target[0], {})
        if isinstance(section, dict):
            section[target[1]] = value
    for canonical, spellings in given.items():
        if len(spellings) > 1:
            problems.append(Problem(f"set twice, as {' and as '.join(spellings)}: they name the same setting; "
                                    f"keep one (the canonical name is {canonical})", file=source,
                                    field=canonical))
    if problems:
        raise ConfigError(problems)
    return out
def _template_fields(template: Any) -> list[str]:
    """The field names a template uses; [] when it names none (or does not parse: checked elsewhere)."""
    import string

    try:
        return [name for _, name, _, _ in string.Formatter().parse(str(template)) if name]
    except ValueError:
        return ["?"]


# ----------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so verbalizers like [NO, YES] stay words."""


_Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are all different: YAML parsers keep the last of a repeated key silently."""
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"the key {key!r} is given twice (the last would "
                "win silently); give each key once", key_node.start_mark)
        if isinstance(key, str):
            seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _short_repr(value: Any, limit: int = 80) -> str:
    """A bounded repr: a value built from YAML aliases can be exponentially large when printed."""
    return short_repr(value, limit)


def _coerce(value: Any, tp: Any, key: str, problems: list[Problem]) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widened to floats) or record a problem."""
    origin = typing.get_origin(tp)

    def bad() -> Problem:  # built only when recorded: printing a value can be costly (see _short_repr)
        return Problem(f"expected {_type_name(tp)}, got {_short_repr(value)} ({type(value).__name__})",
                       field=key)

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(bad())
            return tp()
        return _from_dict(tp, value, key, problems)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        problems.append(bad())
        return None
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            trial: list[Problem] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        problems.append(bad())
        return None
    if tp is type(None):
        if value is None:
            return None
        problems.append(bad())
        return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(bad())
            return []
        return [_coerce(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(bad())
            return {}
        return {str(k): _coerce(v, v_tp, f"{key}.{k}", problems) for k, v in value.items()}
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int too large for a float
                number = math.inf
        elif isinstance(value, str):  # YAML reads '1e-4' (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and not math.isfinite(number):
            problems.append(Problem(f"must be a finite number, got {_short_repr(value)}", field=key))
            return None
        if number is not None:
            return number
        problems.append(bad())
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:  # numpy and torch would overflow on it later
                problems.append(Problem(f"must fit in 64 bits, got {_short_repr(value)}", field=key))
                return None
            return value
        problems.append(bad())
        return None
    if tp is str and isinstance(value, str):
        try:  # YAML's "\ud83d\ude00" escapes (as json.dumps writes an emoji) give a surrogate pair: join it
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError as e:
            problems.append(Problem(f"not valid Unicode text (a lone surrogate at character {e.start // 2})",
                                    field=key))
            return None
    if tp is str or tp is bool:
        if isinstance(value, tp):
            return value
        problems.append(bad())
        return None
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug in this module


def _from_dict(cls: type, data: dict[str, Any], prefix: str, problems: list[Problem]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = key if isinstance(key, str) and key.strip() == key and key else repr(key)  # '', ' x', None
        full = f"{prefix}.{name}" if prefix else name
        if key not in names:
            known = ", ".join(sorted(names))
            problems.append(Problem(f"unknown key; known keys here: {known}", field=full))
            continue
        kwargs[key] = _coerce(value, hints[key], full, problems)
    return cls(**{k: v for k, v in kwargs.items() if v is not None or _allows_none(hints[k])})


def _allows_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001); the value is read as YAML, except for a text
    setting ('task.system=...'), which takes the text as given unless it is quoted or null."""
    if "=" not in text:
        raise ConfigError([Problem(f"override {text!r} is not of the form section.key=value",
                                   field="--set")])
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError([Problem(f"override {_short_repr(text)} has an empty key; write section.key=value",
                                   field="--set")])
    keys = canonical_key(keys)
    text_key = _is_text_key(keys)
    if text_key and raw.strip()[:1] not in ("'", '"') and raw.strip() not in ("null", "~"):
        # A text setting takes the text as given: YAML would read 'Note: {text}' as a mapping, fold a
        # line break into a space and drop '# ...' as a comment. Quote it to use YAML escapes.
        return keys, raw.strip()
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or too deep, or huge ints): the text
        value = raw
    if value is not None and not isinstance(value, str) and text_key:
        value = raw.strip()
    return keys, value


def _is_text_key(keys: list[str]) -> bool:
    """Whether the setting at `keys` is a plain string (str or str | None)."""
    tp: Any = Config
    for k in keys:
        if not dataclasses.is_dataclass(tp):
            return False
        tp = typing.get_type_hints(tp).get(k)
    if tp is None:
        return False
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return set(typing.get_args(tp) if union else (tp,)) <= {str, type(None)}  # list[str] is no text


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a `Config` from nested dicts, reporting every problem at once."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ConfigError([Problem(f"expected a mapping of sections, got {type(data).__name__}",
                                   file=source)])
    data = resolve_aliases(data, source)
    cfg = _from_dict(Config, data, "", problems)
    if not problems:
        problems.extend(cfg.validate())
    if problems:
        raise ConfigError([dataclasses.replace(p, file=p.file or source) for p in problems])
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML (optional), apply `section.key=value` overrides, validate; raise `ConfigError`."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except OSError as e:
            raise ConfigError([Problem(f"cannot read: {e.strerror or e}", file=source)]) from None
        except ValueError as e:  # UnicodeDecodeError; an embedded NUL byte in the path
            why = f"not UTF-8 text (byte {e.start})" if isinstance(e, UnicodeDecodeError) else str(e)
            raise ConfigError([Problem(f"cannot read: {why}; save it as UTF-8", file=source)]) from None
        data = resolve_aliases(_parse_yaml_file(text, source), source)
    if overrides and not isinstance(data, dict):
        raise ConfigError([Problem(f"expected a mapping of sections, got {type(data).__name__}", file=source)])
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError([Problem(f"{k} is not a section", field=".".join(keys))])
        node[keys[-1]] = value
        if path is not None:
            source = f"{path} (with overrides)"
    return config_from_dict(data, source)


def _parse_yaml_file(text: str, source: str) -> Any:
    """The YAML document in `text` ({} when empty); a `ConfigError` saying where it is not YAML."""
    try:
        data = _load_yaml(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = e.problem or e.context or "syntax error"
        raise ConfigError([Problem(f"not valid YAML{where}: {what}", file=source)]) from None
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError([Problem(f"not valid YAML: {first}", file=source)]) from None
    except RecursionError:
        raise ConfigError([Problem("not valid YAML: nested too deeply", file=source)]) from None
    except ValueError:  # an integer with more digits than Python converts
        raise ConfigError([Problem("not valid YAML: a number with too many digits", file=source)]) from None
    return {} if data is None else data


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
