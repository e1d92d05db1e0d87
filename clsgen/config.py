"""Typed configuration: dataclasses with CPU-friendly defaults, loaded from YAML, overridden by flags.

`load_config(path, overrides)` reads a YAML file (optional), applies `section.key=value` overrides and
checks everything at once: unknown keys, wrong types and values that cannot work are reported
together, each naming its key, as a `ConfigError`.

Beside it: `config_yaml` (reading the YAML), `config_aliases` (the Trainer / TRL names of settings),
`config_coerce` (values against the annotations) and `config_checks` (values that cannot work).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_aliases import canonical_key, resolve_aliases
from .config_checks import config_problems
from .config_coerce import from_dict
from .config_yaml import load_yaml, parse_yaml_file
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
    no_repeat_ngram_size: int = 6
    """Generating methods never repeat an n-gram of this many generated tokens (0: off): the
    embedded model's greedy explanations otherwise fall into loops until the token limit."""
    rejection_samples: int = 4
    """Rejection sampling (the experiment's 'clsgen+rejection' row): explanations decoded at most per
    row until one states the head's label (the first greedy, the others sampled)."""
    rejection_temperature: float = 0.7
    """Sampling temperature of the redrawn explanations."""
    batch_size: int = 8
    """Examples per forward pass."""
    n_bootstrap: int = 1000
    """Bootstrap resamples for 95% intervals."""


@dataclass
class ExperimentConfig:
    """The whole comparison: which methods run and where the results go."""

    methods: list[str] = field(default_factory=lambda: [
        "clsgen", "clsgen+consistency", "clsgen+head-verdict", "clsgen+rejection", "classification-only",
        "generation-only", "prompting", "cnn", "tfidf"])
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
        return config_problems(self)


PATH_SETTINGS = ((None, "output_dir"), ("data", "train_file"), ("data", "dev_file"))
"""Where a run's files are: kept out of `Config.to_dict` while unset."""

# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001); the value is read as YAML, except for a text
    setting ('task.system=...'), which takes the text as given unless it is quoted or null."""
    if "=" not in text:
        raise ConfigError([Problem(f"override {text!r} is not of the form section.key=value",
                                   field="--set")])
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError([Problem(f"override {short_repr(text, 80)} has an empty key; write section.key=value",
                                   field="--set")])
    keys = canonical_key(keys)
    text_key = _is_text_key(keys)
    if text_key and raw.strip()[:1] not in ("'", '"') and raw.strip() not in ("null", "~"):
        # A text setting takes the text as given: YAML would read 'Note: {text}' as a mapping, fold a
        # line break into a space and drop '# ...' as a comment. Quote it to use YAML escapes.
        return keys, raw.strip()
    try:
        value = load_yaml(raw) if raw.strip() else ""
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
    cfg = from_dict(Config, data, "", problems)
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
        data = resolve_aliases(parse_yaml_file(text, source), source)
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


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
