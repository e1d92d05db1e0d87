"""Tests for clsgen.model on the tiny model: pooling under every padding, the joint loss, save/load, export.

Padded batches are compared with each example run alone (unpadded), under left padding, right
padding, and pad == eos (the tiny tokenizer's pad is its end-of-turn token, which also occurs inside
every prompt, so pooling by searching for pad ids would pick the wrong token).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clsgen.backbones import tiny_model
from clsgen.collate import IGNORE_INDEX, collate_prompts, collate_train, encode_example
from clsgen.config import LoraConfig
from clsgen.errors import ClsgenError
from clsgen.model import DualHeadModel, load_pretrained
from clsgen.task import Task

TASK = Task(name="toy", system="Decide whether the note is positive.", template="Note: {text}",
            verbalizers=("NO", "YES"))
TEXTS = ["Patients improved.", "No significant difference was observed in the primary outcome at all.",
         "Treatment improved survival versus placebo (p < 0.05).", "No."]
EXPLANATIONS = ["The outcome improved.", None, "Survival improved with treatment, significantly.", "No effect."]



def _perturb(model: DualHeadModel, seed: int = 1) -> DualHeadModel:
    """LoRA B starts at zero (the adapter is a no-op); give it weights so the tests see the adapter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> DualHeadModel:
    return _perturb(DualHeadModel.from_backbone(tiny_model(), TASK, LoraConfig(r=4, dropout=0.0)))


@pytest.fixture(scope="module")
def encoded(model):
    return [encode_example(TASK, model.tokenizer, {"text": t}, i % 2, e, max_length=256, verdict_only=False)
            for i, (t, e) in enumerate(zip(TEXTS, EXPLANATIONS))]


def _alone(model, e, lm_positions="none"):
    """Each example by itself: no padding at all."""
    ids = torch.tensor([e.input_ids[: e.prompt_len]])
    with torch.no_grad():
        return model(ids, torch.ones_like(ids), lm_positions=lm_positions)


def test_pad_is_eos_in_the_tiny_tokenizer(model, encoded):
    tok = model.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.eos_token_id in encoded[0].input_ids[: encoded[0].prompt_len]  # inside the prompt


@pytest.mark.parametrize("pad", ["eos", "distinct"])
def test_left_padding_pools_like_unpadded(model, encoded, pad):
    pad_id = model.tokenizer.eos_token_id if pad == "eos" else model.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert len({len(e) for e in encoded}) > 1
    batch = collate_prompts([e.input_ids[: e.prompt_len] for e in encoded], pad_id)
    with torch.no_grad():
        out = model(**batch, lm_positions="last")
    for i, e in enumerate(encoded):
        ref = _alone(model, e, "last")
        torch.testing.assert_close(out.cls_logits[i], ref.cls_logits[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.lm_logits[i, -1], ref.lm_logits[0, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pad", ["eos", "distinct"])
def test_right_padding_with_targets_pools_like_unpadded(model, encoded, pad):
    pad_id = model.tokenizer.eos_token_id if pad == "eos" else model.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    batch = collate_train(encoded, pad_id)
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["cls_index"], lm_positions="none")
    for i, e in enumerate(encoded):
        torch.testing.assert_close(out.cls_logits[i], _alone(model, e).cls_logits[0], atol=1e-5, rtol=1e-4)


def test_lm_loss_covers_explanation_tokens_only(model, encoded):
    batch = collate_train(encoded, model.tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["cls_index"], labels=batch["labels"],
                    cls_labels=batch["cls_labels"], w_cls=0.0, w_lm=1.0)
    # reference: each example alone, unpadded, CE over its target tokens only
    total, count = 0.0, 0
    for e in encoded:
        if not e.target_len:
            continue
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids), lm_positions="all").lm_logits[0]
        pred = logits[e.prompt_len - 1: len(e) - 1]  # position t predicts token t + 1
        total += F.cross_entropy(pred, ids[0, e.prompt_len:], reduction="sum").item()
        count += e.target_len
    assert out.lm_tokens == count == sum(e.target_len for e in encoded)
    assert out.lm_loss.item() == pytest.approx(total / count, rel=1e-4)
    assert out.cls_loss is None and out.loss.item() == pytest.approx(out.lm_loss.item())
    # prompt tokens never carry LM loss: changing them in the labels is impossible by construction
    for i, e in enumerate(encoded):
        assert (batch["labels"][i, : e.prompt_len] == IGNORE_INDEX).all()


def test_null_explanation_contributes_classification_only(model, encoded):
    e = encoded[1]
    assert e.target_len == 0
    b = collate_train([e], model.tokenizer.pad_token_id)
    out = model(b["input_ids"], b["attention_mask"], b["cls_index"], labels=b["labels"],
                cls_labels=b["cls_labels"], w_cls=2.0, w_lm=1.0)
    assert out.lm_tokens == 0 and out.lm_loss.item() == 0.0
    assert out.loss.item() == pytest.approx(2.0 * out.cls_loss.item())


def test_joint_loss_weights_and_pos_weight(model, encoded):
    b = collate_train(encoded, model.tokenizer.pad_token_id)
    args = (b["input_ids"], b["attention_mask"], b["cls_index"])
    kw = dict(labels=b["labels"], cls_labels=b["cls_labels"])
    with torch.no_grad():
        joint = model(*args, **kw, w_cls=0.7, w_lm=0.3, pos_weight=2.5)
    z, y = joint.cls_logits, b["cls_labels"]
    manual = -(2.5 * y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()
    assert joint.cls_loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert joint.loss.item() == pytest.approx(0.7 * joint.cls_loss.item() + 0.3 * joint.lm_loss.item(), rel=1e-5)


@pytest.mark.parametrize("w_cls,w_lm", [(1.0, 0.0), (0.0, 1.0)])
def test_single_term_baselines_have_gradients(model, encoded, w_cls, w_lm):
    b = collate_train(encoded, model.tokenizer.pad_token_id)
    model.zero_grad()
    out = model(b["input_ids"], b["attention_mask"], b["cls_index"], labels=b["labels"],
                cls_labels=b["cls_labels"], w_cls=w_cls, w_lm=w_lm)
    assert (out.cls_loss is None) == (w_cls == 0) and (out.lm_loss is None) == (w_lm == 0)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    lora = [g for n, g in grads.items() if "lora_" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora)
    head = grads["head.linear.weight"]
    assert (head is not None and head.abs().sum() > 0) == (w_cls > 0)
    model.zero_grad()


def test_only_lora_and_head_are_trainable(model):
    names = [n for n, _ in model.trainable_parameters()]
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    assert "head.linear.weight" in names


def test_bf16_base_keeps_fp32_adapters_and_finite_grads(encoded):
    m = DualHeadModel.from_backbone(tiny_model(dtype=torch.bfloat16), TASK, LoraConfig(r=4))
    assert {p.dtype for _, p in m.trainable_parameters()} == {torch.float32}
    b = collate_train(encoded, m.tokenizer.pad_token_id)
    out = m(b["input_ids"], b["attention_mask"], b["cls_index"], labels=b["labels"], cls_labels=b["cls_labels"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in m.trainable_parameters())


def test_unknown_lora_target_is_refused():
    with pytest.raises(ClsgenError, match=r"lora\.target_modules \['qkv_proj'\] do not exist"):
        DualHeadModel.from_backbone(tiny_model(), TASK, LoraConfig(target_modules=["q_proj", "qkv_proj"]))


def _outputs(m, encoded):
    b = collate_train(encoded, m.tokenizer.pad_token_id)
    with torch.no_grad():
        return m(b["input_ids"], b["attention_mask"], b["cls_index"], lm_positions="all")


def test_save_load_round_trip(model, encoded, tmp_path):
    model.meta.update(threshold=0.42, temperature=1.5)
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors", "clsgen.json",
            "tokenizer.json"} <= files
    meta = json.loads((tmp_path / "m" / "clsgen.json").read_text())
    assert meta["base_model"] == "tiny" and meta["task"]["verbalizers"] == ["NO", "YES"]
    assert (meta["threshold"], meta["temperature"]) == (0.42, 1.5)
    loaded = load_pretrained(tmp_path / "m", dtype="float32")
    assert loaded.task == TASK and loaded.meta["threshold"] == 0.42
    a, b = _outputs(model, encoded), _outputs(loaded, encoded)
    torch.testing.assert_close(a.cls_logits, b.cls_logits)
    torch.testing.assert_close(a.lm_logits, b.lm_logits)


def test_saving_a_gathered_state_dict_writes_those_weights(model, encoded, tmp_path):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.linear.bias"] = state["head.linear.bias"] + 1.0
    model.save_pretrained(tmp_path / "m", state_dict=state)
    loaded = load_pretrained(tmp_path / "m", dtype="float32")
    torch.testing.assert_close(_outputs(loaded, encoded).cls_logits, _outputs(model, encoded).cls_logits + 1.0)


def test_merged_export_loads_without_peft_and_matches(model, encoded, tmp_path):
    from peft import PeftModel

    model.save_pretrained(tmp_path / "m")
    copy = load_pretrained(tmp_path / "m", dtype="float32")
    copy.export_merged(tmp_path / "merged")
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "adapter_config.json" not in files and {"model.safetensors", "config.json", "head.safetensors"} <= files
    merged = load_pretrained(tmp_path / "merged", dtype="float32")
    assert not isinstance(merged.lm, PeftModel) and not any("lora_" in n for n, _ in merged.named_parameters())
    a, b = _outputs(model, encoded), _outputs(merged, encoded)
    torch.testing.assert_close(a.cls_logits, b.cls_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.lm_logits, b.lm_logits, atol=1e-4, rtol=1e-4)


def test_consistency_gradient_reaches_the_lm_only(model):
    rows = [encode_example(TASK, model.tokenizer, {"text": t}, i % 2, e, max_length=256)
            for i, (t, e) in enumerate(zip(TEXTS, EXPLANATIONS))]
    b = collate_train(rows, model.tokenizer.pad_token_id)
    model.zero_grad(set_to_none=True)
    out = model(b["input_ids"], b["attention_mask"], b["cls_index"], w_cls=0.0, w_lm=0.0,
                verdict_at=b["verdict_at"], verdict_ids=b["verdict_ids"], w_consistency=1.0)
    has = b["verdict_at"] >= 0
    target = torch.sigmoid(out.cls_logits.detach())[has]
    assert out.loss.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(out.verdict_logits[has], target).item(), rel=1e-6)
    out.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    model.zero_grad(set_to_none=True)


def test_verdict_logits_are_the_teacher_forced_verbalizer_log_odds(model):
    rows = [encode_example(TASK, model.tokenizer, {"text": t}, i % 2, e, max_length=256)
            for i, (t, e) in enumerate(zip(TEXTS, EXPLANATIONS))]
    b = collate_train(rows, model.tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(b["input_ids"], b["attention_mask"], b["cls_index"], lm_positions="all",
                    verdict_at=b["verdict_at"], verdict_ids=b["verdict_ids"])
    for i, e in enumerate(rows):
        logp = torch.log_softmax(out.lm_logits[i, e.verdict_at - 1], dim=-1)
        expected = logp[e.verdict_ids[1]] - logp[e.verdict_ids[0]]
        assert out.verdict_logits[i].item() == pytest.approx(expected.item(), abs=1e-4)
