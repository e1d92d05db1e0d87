"""Tests for clsgen.backbones: the tiny test model, tokenizer preparation, local dirs, the embedded model."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from clsgen import backbones
from clsgen.backbones import (
    CHATML_TEMPLATE,
    load_model,
    load_tokenizer,
    prepare_tokenizer,
    resolve_dtype,
    stop_token_ids,
    tiny_model,
    tiny_tokenizer,
)
from clsgen.cli.generate import generate_reply
from clsgen.errors import ClsgenError

CHAT = [{"role": "system", "content": "You are a helpful medical assistant."},
        {"role": "user", "content": "Is aspirin an anti-inflammatory drug?"}]


def test_tiny_model_builds_fast_with_pad_eq_eos_and_chat_template(tiny):
    started = time.perf_counter()
    b = tiny_model(seed=1)
    assert time.perf_counter() - started < 5
    tok = b.tokenizer
    assert tok.pad_token is not None and tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.chat_template == CHATML_TEMPLATE
    assert b.model.config.vocab_size == len(tok)
    assert b.model.config.pad_token_id == tok.pad_token_id
    assert b.model.generation_config.pad_token_id == tok.pad_token_id
    assert not b.model.training
    ids = tok(tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False),
              return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = b.model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_tiny_model_is_seeded(tiny):
    a = tiny_model(seed=0).model.state_dict()
    b = tiny.model.state_dict()
    c = tiny_model(seed=1).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].dtype.is_floating_point)


def test_tiny_tokenizer_round_trips_text():
    tok = tiny_tokenizer()
    text = "Claim: drug X lowers LDL by 30% (p < 0.05). Ünïcödé ✓"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert load_tokenizer("tiny").get_vocab() == tok.get_vocab()


def test_prepare_tokenizer_sets_pad_and_template():
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.chat_template = None
    assert tok.pad_token is None
    out = prepare_tokenizer(tok)
    assert out is tok
    assert tok.pad_token == tok.eos_token and tok.pad_token_id == tok.eos_token_id
    assert tok.chat_template == CHATML_TEMPLATE
    # an existing pad token and template are kept
    tok2 = tiny_tokenizer()
    tok2.pad_token = "<|endoftext|>"
    tok2.chat_template = "{{ messages[0]['content'] }}"
    prepare_tokenizer(tok2)
    assert tok2.pad_token == "<|endoftext|>" and tok2.pad_token_id != tok2.eos_token_id
    assert tok2.chat_template == "{{ messages[0]['content'] }}"


def test_prepare_tokenizer_without_pad_or_eos():
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ClsgenError) as e:
        prepare_tokenizer(tok)
    assert "pad" in str(e.value) and "eos" in str(e.value)


def test_resolve_dtype(monkeypatch):
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(backbones, "native_bfloat16", lambda native=native: native)
        assert resolve_dtype("auto") == expected  # bfloat16 only where the hardware computes it natively
    monkeypatch.undo()
    assert resolve_dtype("float32") == torch.float32
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ClsgenError) as e:
        resolve_dtype("float64")
    assert "model.dtype" in str(e.value)
    assert load_model("tiny", dtype="bfloat16").model.dtype == torch.bfloat16


def test_bad_model_paths_are_clsgen_errors(tmp_path):
    with pytest.raises(ClsgenError) as e:
        load_model("/nonexistent/dir")
    assert "/nonexistent/dir" in str(e.value)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ClsgenError):
        load_model(str(tmp_path / "file.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClsgenError) as e:
        load_model(str(tmp_path / "empty"))
    assert "config.json" in str(e.value)
    with pytest.raises(ClsgenError):
        load_tokenizer(str(tmp_path / "empty"))


def test_local_directory_round_trip(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    b = load_model(str(tmp_path / "m"), dtype="float32")
    assert b.spec == str(tmp_path / "m")
    assert b.tokenizer.pad_token_id == b.tokenizer.eos_token_id == tiny.tokenizer.eos_token_id
    assert b.tokenizer.apply_chat_template(CHAT, tokenize=False) == tiny.tokenizer.apply_chat_template(
        CHAT, tokenize=False)
    ids = torch.tensor([[1, 5, 9, 40, 77, 2]])
    with torch.no_grad():
        assert torch.allclose(b.model(ids).logits, tiny.model(ids).logits, atol=1e-6)


def test_embedded_gguf_is_shipped():
    path = backbones.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


# ---------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_embedded_checkpoint_matches_gguf(embedded):
    tok = embedded.tokenizer
    assert embedded.model.dtype == torch.float32
    assert tok.pad_token is not None and tok.chat_template
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text.rstrip().endswith("<|im_start|>assistant")
    gguf_model, gguf_tok = backbones.load_gguf(torch.float32)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    assert ids["input_ids"].tolist() == gguf_tok(text, return_tensors="pt",
                                                 add_special_tokens=False)["input_ids"].tolist()
    with torch.no_grad():
        ours = embedded.model(**ids).logits
        ref = gguf_model.eval()(**ids).logits
    assert (ours - ref).abs().max().item() < 1e-4
    # the converted checkpoint is a clean HF config without the GGUF quantizer
    folder = backbones.embedded_checkpoint()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (folder / "model.safetensors").is_file() and (folder / "clsgen_source.json").is_file()


@pytest.mark.slow
def test_embedded_second_load_is_fast(embedded):
    started = time.perf_counter()
    again = load_model("smollm2-135m", dtype="float32")
    assert time.perf_counter() - started < 10
    assert again.model.dtype == torch.float32
    auto = torch.bfloat16 if backbones.native_bfloat16() else torch.float32
    assert load_model("smollm2-135m").model.dtype == auto
    assert again.tokenizer.pad_token_id is not None


@pytest.mark.slow
def test_embedded_generates_readable_english(embedded):
    reply = generate_reply(embedded, "What is aspirin used for?", max_new_tokens=40)
    words = re.findall(r"[A-Za-z]{2,}", reply)
    assert len(words) >= 5, reply
    assert "<|im_" not in reply
    common = {"the", "is", "and", "to", "of", "a", "used", "for", "pain", "aspirin", "it", "in"}
    assert common & {w.lower() for w in words}, reply


def test_stop_token_ids_are_eos_generation_eos_and_end_of_turn_tokens(tiny):
    """One set of stop ids for inference, the prompting baseline and the local teacher: the tokenizer's
    eos, the generation config's eos (one id or a list) and the end-of-turn tokens the vocabulary has."""
    tok, model = tiny.tokenizer, tiny.model
    vocab = tok.get_vocab()
    turn_ends = {vocab[t] for t in backbones.END_OF_TURN_TOKENS if t in vocab}
    assert turn_ends and tok.eos_token_id in stop_token_ids(model, tok)
    assert turn_ends <= stop_token_ids(model, tok)

    class Config:
        eos_token_id = [5, 6]

    class Model:
        generation_config = Config()

    assert {5, 6, tok.eos_token_id} | turn_ends == stop_token_ids(Model(), tok)
    Config.eos_token_id = 7
    assert 7 in stop_token_ids(Model(), tok)
    assert stop_token_ids(object(), tok) == {tok.eos_token_id} | turn_ends  # no generation config
