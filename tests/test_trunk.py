"""Tests for the cached frozen trunk (clsgen.trunk) and the band of LoRA layers it feeds: the cached
path gives the full forward pass's hidden states, losses and gradients; a killed build resumes; a
changed setting never reuses stale states."""

from __future__ import annotations

import pytest
import torch

from clsgen.backbones import tiny_model
from clsgen.collate import collate_train, encode_example
from clsgen.config import HeadConfig, LoraConfig
from clsgen.errors import ClsgenError
from clsgen.model import DualHeadModel
from clsgen.task import Task
from clsgen.trunk import TrunkCache, collate_trunk, example_key

TASK = Task(name="t", system="Is the note positive?", template="Note: {text}", verbalizers=("NO", "YES"),
            verdict_position="first")
TEXTS = ["the patient improved markedly", "no change at all was seen", "worse outcomes", "much better"]


def _model(head: HeadConfig, dtype=torch.float32, lora: LoraConfig | None = None) -> DualHeadModel:
    model = DualHeadModel.from_backbone(tiny_model(num_layers=4, dtype=dtype), TASK,
                                        lora or LoraConfig(r=4, top_layers=2), head=head)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
        model.head.linear.weight.normal_(0, 1.0)
    return model


def _rows(model: DualHeadModel) -> list:
    return [encode_example(TASK, model.tokenizer, {"text": t * (i + 1)}, i % 2,
                           None if i == 2 else "because " * (i + 3), 256) for i, t in enumerate(TEXTS)]


def _both_paths(model: DualHeadModel, rows: list, cache: TrunkCache):
    b = collate_train(rows, model.tokenizer.pad_token_id)
    trunk = collate_trunk(cache.load(rows), model.head.pooling)
    params = [p for _, p in model.trainable_parameters()]
    results = []
    for extra in ({}, trunk):
        out = model(b["input_ids"], b["attention_mask"], b["cls_index"], labels=b["labels"],
                    cls_labels=b["cls_labels"], lm_positions="all", verdict_at=b["verdict_at"],
                    verdict_ids=b["verdict_ids"], w_consistency=0.5, **extra)
        grads = torch.autograd.grad(out.loss, params, allow_unused=True)
        results.append((out, grads))
    return results


@pytest.mark.parametrize("head", [HeadConfig(), HeadConfig(layer=1, pooling="mean"),
                                  HeadConfig(layer="mix", pooling="mean"), HeadConfig(layer=3)],
                         ids=["final-last", "trunk-layer-mean", "mix", "band-layer"])
def test_cached_path_equals_the_full_forward_in_float32(tmp_path, head):
    model = _model(head).train()
    rows = _rows(model)
    cache = TrunkCache(model, tmp_path)
    cache.build(rows, batch_size=3, progress=False)
    (full, g_full), (cached, g_cached) = _both_paths(model, rows, cache)
    real = collate_train(rows, model.tokenizer.pad_token_id)["attention_mask"].bool()  # padding is junk
    torch.testing.assert_close(cached.lm_logits[real], full.lm_logits[real], rtol=0, atol=1e-5)
    # the random head's logits reach ~10: float32 rounding there is ~1e-6 relative, whichever kernels
    # (AVX2, AVX-512) the CPU runs
    torch.testing.assert_close(cached.cls_logits, full.cls_logits, rtol=1e-5, atol=1e-5)
    for a, b in ((cached.loss, full.loss), (cached.lm_loss, full.lm_loss), (cached.cls_loss, full.cls_loss),
                 (cached.consistency_loss, full.consistency_loss)):
        assert a.item() == pytest.approx(b.item(), rel=1e-6, abs=1e-7)
    assert any(g is not None and g.abs().sum() > 0 for g in g_full)
    for a, b in zip(g_full, g_cached):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_cached_path_matches_in_bfloat16_within_tolerance(tmp_path):
    model = _model(HeadConfig(layer="mix", pooling="mean"), dtype=torch.bfloat16).train()
    rows = _rows(model)
    cache = TrunkCache(model, tmp_path)
    cache.build(rows, batch_size=2, progress=False)
    assert cache.load(rows)[0].hidden.dtype == torch.bfloat16
    (full, g_full), (cached, g_cached) = _both_paths(model, rows, cache)
    assert cached.loss.item() == pytest.approx(full.loss.item(), rel=2e-2)
    torch.testing.assert_close(cached.cls_logits, full.cls_logits, rtol=5e-2, atol=5e-2)
    for a, b in zip(g_full, g_cached):
        if a is not None:
            assert torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0) > 0.98


def test_a_killed_build_resumes_with_the_missing_examples_only(tmp_path, monkeypatch):
    import clsgen.trunk as trunk_module

    model = _model(HeadConfig())
    rows = _rows(model)
    monkeypatch.setattr(trunk_module, "SHARD_EXAMPLES", 2)
    cache = TrunkCache(model, tmp_path)
    real_write = TrunkCache._write_shard
    writes = []

    def dying_write(self, first, tensors):
        if writes:
            raise KeyboardInterrupt  # a kill after the first shard
        writes.append(first)
        real_write(self, first, tensors)

    monkeypatch.setattr(TrunkCache, "_write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        cache.build(rows, batch_size=1, progress=False)
    assert len(cache.stored_keys()) == 2 and not list(cache.dir.glob(".*tmp"))
    monkeypatch.setattr(TrunkCache, "_write_shard", real_write)
    again = TrunkCache(model, tmp_path).build(rows, batch_size=1, progress=False)
    assert again["computed"] == 2
    assert TrunkCache(model, tmp_path).build(rows, progress=False)["computed"] == 0
    fresh = tmp_path / "fresh"
    TrunkCache(model, fresh).build(rows, progress=False)
    for a, b in zip(TrunkCache(model, tmp_path).load(rows), TrunkCache(model, fresh).load(rows)):
        torch.testing.assert_close(a.hidden, b.hidden, rtol=0, atol=1e-6)


def test_changed_settings_never_reuse_stale_states(tmp_path):
    model = _model(HeadConfig())
    rows = _rows(model)
    cache = TrunkCache(model, tmp_path)
    cache.build(rows, progress=False)
    deeper = _model(HeadConfig(), lora=LoraConfig(r=4, top_layers=1))
    assert TrunkCache(deeper, tmp_path).dir != cache.dir  # another trunk depth: another entry
    bf16 = _model(HeadConfig(), dtype=torch.bfloat16)
    assert TrunkCache(bf16, tmp_path).dir != cache.dir
    other_task = TASK.with_overrides(system="Another instruction.")
    changed = encode_example(other_task, model.tokenizer, {"text": TEXTS[0]}, 1, None, 256)
    assert example_key(changed) != example_key(rows[0])  # another rendering: another example key
    with pytest.raises(ClsgenError, match="missing from the trunk cache"):
        cache.load([changed])


def test_settings_that_cannot_work_are_refused():
    backbone = tiny_model(num_layers=4)
    with pytest.raises(ClsgenError, match="top_layers=4 leaves no frozen trunk"):
        DualHeadModel.from_backbone(backbone, TASK, LoraConfig(top_layers=4))
    with pytest.raises(ClsgenError, match="reaches past"):
        DualHeadModel.from_backbone(tiny_model(num_layers=4), TASK, LoraConfig(layers=[1, 6]))
    with pytest.raises(ClsgenError, match="head.layer=9"):
        DualHeadModel.from_backbone(tiny_model(num_layers=4), TASK, LoraConfig(top_layers=2),
                                    head=HeadConfig(layer=9))
    dropout = tiny_model(num_layers=4)
    dropout.model.config.attention_dropout = 0.1
    with pytest.raises(ClsgenError, match="not deterministic"):
        DualHeadModel.from_backbone(dropout, TASK, LoraConfig(top_layers=2))
    full = DualHeadModel.from_backbone(tiny_model(num_layers=4), TASK, LoraConfig())
    with pytest.raises(ClsgenError, match="no frozen trunk"):
        TrunkCache(full)


def test_lora_lives_in_the_band_only():
    model = DualHeadModel.from_backbone(tiny_model(num_layers=4), TASK, LoraConfig(r=4, layers=[1, 3]))
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in model.trainable_parameters() if "lora_" in n}
    assert layers == {1, 2} and model.trunk_layers == 1


def test_head_readout_is_saved_and_restored(tmp_path):
    from clsgen.model import load_pretrained

    # 'tiny' reloads as tiny_model()'s two layers
    model = DualHeadModel.from_backbone(tiny_model(), TASK, LoraConfig(r=4, top_layers=1),
                                        head=HeadConfig(layer="mix", pooling="mean"))
    with torch.no_grad():
        model.head.shift.normal_()
        model.head.mix.normal_()
    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.head.settings() == model.head.settings() and loaded.trunk_layers == 1
    ids = torch.tensor([model.task.encode_prompt(model.tokenizer, {"text": "better"}).input_ids])
    with torch.no_grad():
        a = model.eval()(ids, torch.ones_like(ids)).cls_logits
        b = loaded(ids, torch.ones_like(ids)).cls_logits
    torch.testing.assert_close(a, b)


def test_mean_pooling_is_the_same_under_left_and_right_padding():
    model = _model(HeadConfig(layer=2, pooling="mean")).eval()
    prompts = [model.task.encode_prompt(model.tokenizer, {"text": t}).input_ids for t in TEXTS]
    from clsgen.collate import collate_prompts

    left = collate_prompts(prompts, model.tokenizer.pad_token_id)
    rows = [encode_example(TASK, model.tokenizer, {"text": t}, 0, "x", 256) for t in TEXTS]
    right = collate_train(rows, model.tokenizer.pad_token_id)  # right-padded, targets after the prompt
    with torch.no_grad():
        a = model(**left).cls_logits
        b = model(right["input_ids"], right["attention_mask"], right["cls_index"]).cls_logits
        alone = torch.cat([model(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long)).cls_logits
                           for p in prompts])
    torch.testing.assert_close(a, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(b, alone, rtol=0, atol=1e-5)


def test_probe_init_of_a_mix_starts_at_the_best_layer():
    import numpy as np

    from clsgen.head import ClassificationHead, fit_probe

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 4, 8))
    x[:, 2, 0] += 3.0 * y  # only layer 2 carries the label
    head = ClassificationHead(8, "mix", "mean", num_layers=3)
    info = fit_probe(head, x[:150], y[:150], x[150:], y[150:])
    assert info["folds"] == 5 and "dev_auroc" in info
    assert info["best_layer"] == 2
    assert torch.softmax(head.mix, 0)[2].item() == pytest.approx(0.9, abs=1e-4)
    with torch.no_grad():
        p = torch.sigmoid(head(torch.from_numpy(x[150:]).float())).numpy()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[150:], p) > 0.9


def test_train_with_a_cached_trunk_and_a_probe_head(tmp_path):
    """The whole loop on the cached path: the cache is built once and shared by a second run, the
    probe warm-starts the head, and the saved model is an ordinary folder that reloads."""
    from clsgen.model import load_pretrained
    from clsgen.train import train

    from helpers import make_cfg, toy

    cfg = make_cfg(max_steps=2, batch_size=4, eval_every=2, cache_dir=str(tmp_path / "cache"))
    cfg.model.name, cfg.lora.top_layers = "tiny", 1
    cfg.head = HeadConfig(layer="mix", pooling="mean", init="probe")
    first = train(cfg, toy(12, 1), toy(8, 2), tmp_path / "a", progress=False)
    s = first.summary
    # 20 rows; identical token ids are stored once
    assert s["trunk_cache"]["examples"] == 20 and 0 < s["trunk_cache"]["computed"] <= 20
    assert s["trunk_cache"]["trunk_layers"] == 1
    assert s["probe"]["best_layer"] in (0, 1, 2) and first.best_dev_auroc is not None
    again = train(cfg, toy(12, 1), toy(8, 2), tmp_path / "b", progress=False)
    assert again.summary["trunk_cache"]["computed"] == 0  # shared, not rebuilt
    loaded = load_pretrained(tmp_path / "a")
    assert loaded.trunk_layers == 1 and loaded.head.settings()["layer"] == "mix"


def test_probe_of_a_head_inside_the_trunk_reads_the_cache(tmp_path):
    """A head reading a frozen trunk layer is probed from the cached pooled states, without running
    the LoRA layers: the same head a probe on the full forward pass's features gives."""
    from clsgen.head import ClassificationHead, fit_probe
    from clsgen.model import load_pretrained
    from clsgen.train import train

    from helpers import make_cfg, toy

    cfg = make_cfg(max_steps=1, batch_size=4, eval_every=1, head_lr=0.0, cache_dir=str(tmp_path / "cache"))
    cfg.model.name, cfg.lora.top_layers = "tiny", 1
    cfg.head = HeadConfig(layer=1, pooling="mean", init="probe")
    rows, dev = toy(12, 1), toy(8, 2)
    result = train(cfg, rows, dev, tmp_path / "m", progress=False)
    assert result.summary["probe"]["folds"] >= 2
    assert not result.summary["head_only"]  # the LM term trains the band: its layers ran
    from clsgen.train_log import summary_line

    cfg.train.w_lm = 0.0
    band = train(cfg, rows, dev, tmp_path / "band", progress=False)
    assert not band.summary["head_only"]  # layer 1 is the band's input: the pass still runs a layer
    cfg.head = HeadConfig(layer=0, pooling="mean", init="probe")  # inside the trunk (1 layer)
    alone = train(cfg, rows, dev, tmp_path / "alone", progress=False)
    assert alone.summary["head_only"]  # the head alone, from the cached trunk: no layer ran
    assert "(the head alone," in summary_line(alone.summary, tmp_path / "alone")
    model = load_pretrained(tmp_path / "m")
    assert model.trunk_layers == 1 and model.head.layer == 1

    def features(examples):
        enc = [encode_example(model.task, model.tokenizer, ex.fields, ex.label, None, 128) for ex in examples]
        batch = collate_train(enc, model.tokenizer.pad_token_id)
        with torch.no_grad():
            out = model(batch["input_ids"], batch["attention_mask"], batch["cls_index"], lm_positions="none")
        return out.pooled.numpy()

    fresh = ClassificationHead(model.head.hidden_size, 1, "mean")
    fit_probe(fresh, features(rows), [r.label for r in rows])
    torch.testing.assert_close(model.head.linear.weight, fresh.linear.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.head.shift, fresh.shift, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_scoring_a_head_below_the_top_skips_the_layers_above_it(layer):
    """A head-only pass (no LM logits, labels, verdict or cache wanted) stops on entering the layer
    above what the head reads; its logits equal those of a pass that runs every layer."""
    model = _model(HeadConfig(layer=layer, pooling="mean")).eval()
    b = collate_train(_rows(model), model.tokenizer.pad_token_id)
    entered = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: entered.append(i))
             for i, m in enumerate(model.decoder.layers)]
    with torch.no_grad():
        fast = model(b["input_ids"], b["attention_mask"], b["cls_index"], lm_positions="none").cls_logits
        ran = sorted(set(entered))
        full = model(b["input_ids"], b["attention_mask"], b["cls_index"], lm_positions="last").cls_logits
    for h in hooks:
        h.remove()
    assert ran == list(range(layer + 1))  # the layer it reads is entered (its input kept), none above
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layer, ran", [(1, []), (3, [2, 3])], ids=["head-in-trunk", "head-in-band"])
def test_training_the_head_alone_from_the_cache_runs_no_layer_above_it(tmp_path, layer, ran):
    """Classification only (no LM, no consistency term): train's head-only inputs stop the pass at the
    head's layer, or skip every decoder layer when the head reads the cached trunk; loss and head
    gradients equal those of the full cached pass."""
    from clsgen.train import _forward_inputs

    model = _model(HeadConfig(layer=layer, pooling="mean")).train()  # LoRA in layers 2-3, trunk 0-1
    rows = _rows(model)
    cache = TrunkCache(model, tmp_path)
    cache.build(rows, batch_size=3, progress=False)
    b = {**collate_train(rows, model.tokenizer.pad_token_id), **collate_trunk(cache.load(rows), "mean")}
    params = [p for _, p in model.trainable_parameters()]
    results = []
    for head_only in (False, True):
        entered = []
        hooks = [m.register_forward_pre_hook(lambda mod, args, i=i, seen=entered: seen.append(i))
                 for i, m in enumerate(model.decoder.layers)]
        out = model(b["input_ids"], b["attention_mask"], b["cls_index"], cls_labels=b["cls_labels"],
                    **_forward_inputs(b, head_only))
        for h in hooks:
            h.remove()
        results.append((out.loss, torch.autograd.grad(out.loss, params, allow_unused=True), sorted(set(entered))))
    (full_loss, full_grads, full_ran), (loss, grads, head_ran) = results
    assert full_ran == [2, 3] and head_ran == ran
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-6)
    for a, g in zip(full_grads, grads):
        if g is not None:
            torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-6)
        else:  # a layer the head does not read from: nothing reaches it on either path
            assert a is None or a.abs().sum() == 0
