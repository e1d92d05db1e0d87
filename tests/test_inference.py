"""Tests for clsgen.inference: the cached one-prefill path against a separate head forward plus an
uncached `generate`, left padding, streaming, sampling, inputs and the classifier wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clsgen.backbones import tiny_model
from clsgen.classifier import Classifier, Explainer
from clsgen.data import Example
from clsgen.errors import ClsgenError
from clsgen.estimator import ClsgenClassifier
from clsgen.inference import Prediction, Predictor, StreamEvent
from clsgen.model import DualHeadModel
from clsgen.task import Task

TASK = Task(name="toy", system="Decide whether the claim holds. End with 'Answer: TRUE' or 'Answer: FALSE'.",
            template="Claim: {claim}\nAbstract: {article_abstract}", verbalizers=("FALSE", "TRUE"))
ONE_FIELD = Task(name="note", system="Read the note.", template="Note: {text}", verbalizers=("NO", "YES"))
ITEMS = [  # three different prompt lengths: the batch is left padded
    {"claim": "a b", "article_abstract": "x"},
    {"claim": "Patients improved.", "article_abstract": "Patients randomised to treatment improved versus "
                                                        "placebo (p < 0.05)."},
    {"claim": "No significant difference", "article_abstract": "The claim is supported by the abstract. " * 4},
]
N_NEW = 24



def _lively(model: DualHeadModel, seed: int = 1) -> DualHeadModel:
    """Randomise every weight (LoRA B included) so greedy decoding produces varied tokens; the fresh
    tiny model's small init emits one token over and over, which would make the test vacuous."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0 if "embed" in name else 0.25)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> DualHeadModel:
    m = _lively(DualHeadModel.from_backbone(tiny_model(), TASK))
    m.meta["temperature"] = 1.7  # the stored temperature must be applied on both paths
    return m


def _reference(model: DualHeadModel, item: dict, stop: list[int], max_new: int) -> tuple[float, list[int]]:
    """Unpadded, uncached: a separate head forward, then HF `generate` with use_cache=False."""
    ids = torch.tensor([TASK.encode_prompt(model.tokenizer, item).input_ids])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logit = float(model(ids, mask, lm_positions="none").cls_logits[0])
        out = model.causal_lm.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                                       use_cache=False, eos_token_id=stop,
                                       pad_token_id=model.tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    for i, t in enumerate(new):  # generate pads after the stop token
        if t in stop:
            new = new[: i + 1]
            break
    return float(torch.sigmoid(torch.tensor(logit / 1.7))), new


def test_cached_path_equals_separate_forward_and_uncached_generate(model):
    predictor = Predictor(model, batch_size=len(ITEMS), max_new_tokens=N_NEW)
    lengths = [len(predictor.encode(it).input_ids) for it in ITEMS]
    assert len(set(lengths)) == len(ITEMS)  # really different lengths -> left padding in one batch
    preds = predictor.predict(ITEMS)
    for item, pred in zip(ITEMS, preds):
        prob, ids = _reference(model, item, predictor.stop_token_ids, N_NEW)
        assert abs(pred.probability - prob) < 1e-5
        assert pred.token_ids == ids
        assert len(set(ids)) > 3  # not a degenerate single-token loop
        assert pred.text == model.tokenizer.decode(
            [t for t in ids if t not in predictor.stop_token_ids], skip_special_tokens=True).strip()


def test_each_row_stops_at_its_own_stop_token(model):
    free = Predictor(model, batch_size=3, max_new_tokens=N_NEW).predict(ITEMS)
    stop_token = free[0].token_ids[3]  # row 0 will stop at step <= 3; the others may continue
    predictor = Predictor(model, batch_size=3, max_new_tokens=N_NEW, stop_token_ids=[stop_token])
    preds = predictor.predict(ITEMS)
    assert preds[0].token_ids[-1] == stop_token and len(preds[0].token_ids) <= 4
    for item, pred in zip(ITEMS, preds):
        _, ids = _reference(model, item, [stop_token], N_NEW)
        assert pred.token_ids == ids
        assert pred.new_tokens == len(ids)


def test_batching_and_order_do_not_change_results(model):
    one = Predictor(model, batch_size=1, max_new_tokens=12).predict(ITEMS)
    many = Predictor(model, batch_size=2, max_new_tokens=12).predict(list(reversed(ITEMS)))[::-1]
    for a, b in zip(one, many):
        assert abs(a.probability - b.probability) < 1e-5
        assert a.token_ids == b.token_ids


def test_predict_proba_matches_predict_without_generating(model):
    predictor = Predictor(model, batch_size=2, max_new_tokens=8)
    proba = predictor.predict_proba(ITEMS)
    preds = predictor.predict(ITEMS, explain=False)
    assert isinstance(proba, np.ndarray) and proba.shape == (3,)
    np.testing.assert_allclose(proba, [p.probability for p in preds], atol=1e-6)
    assert all(p.text is None and p.explanation is None and p.verdict is None for p in preds)
    raw = predictor.logits(ITEMS)
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-raw / 1.7)), atol=1e-9)


def test_label_uses_the_stored_threshold(model):
    predictor = Predictor(model, max_new_tokens=0)
    p = predictor.predict_proba(ITEMS)
    cut = float(np.sort(p)[1])
    saved = dict(model.meta)
    try:
        model.meta["threshold"] = cut
        preds = predictor.predict(ITEMS, explain=False)
        assert [x.label for x in preds] == [int(v >= cut) for v in p]
        assert all(x.threshold == cut for x in preds)
    finally:
        model.meta.clear()
        model.meta.update(saved)


def test_stream_yields_probability_then_deltas_then_the_prediction(model):
    predictor = Predictor(model, max_new_tokens=N_NEW)
    events = list(predictor.stream(ITEMS[1]))
    assert all(isinstance(e, StreamEvent) for e in events)
    assert events[0].type == "probability" and events[-1].type == "done"
    assert {e.type for e in events[1:-1]} == {"delta"}
    final = events[-1].prediction
    assert "".join(e.delta for e in events[1:-1]) == final.text
    batch = predictor.predict([ITEMS[1]])[0]
    assert final.token_ids == batch.token_ids
    assert abs(events[0].probability - batch.probability) < 1e-6
    json.dumps([e.to_dict() for e in events])  # serialisable for server-sent events


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(model):
    greedy = Predictor(model, max_new_tokens=12).predict(ITEMS)
    a = Predictor(model, max_new_tokens=12, do_sample=True, temperature=1.5, seed=3).predict(ITEMS)
    b = Predictor(model, max_new_tokens=12, do_sample=True, temperature=1.5, seed=3).predict(ITEMS)
    c = Predictor(model, max_new_tokens=12, do_sample=True, temperature=1.5, seed=4).predict(ITEMS)
    assert [p.token_ids for p in a] == [p.token_ids for p in b]
    assert [p.token_ids for p in a] != [p.token_ids for p in c]
    nucleus = Predictor(model, max_new_tokens=12, do_sample=True, top_p=1e-9, seed=5).predict(ITEMS)
    assert [p.token_ids for p in nucleus] == [p.token_ids for p in greedy]
    for p_sampled, p_greedy in zip(a, greedy):  # sampling never changes the probability
        assert p_sampled.probability == p_greedy.probability


def test_verdict_and_explanation_are_parsed_from_the_generated_text(model):
    predictor = Predictor(model)
    ids = model.tokenizer.encode("The abstract supports it.\n\nAnswer: TRUE", add_special_tokens=False)
    eos = model.tokenizer.eos_token_id
    pred = predictor._prediction(0.3, predictor.encode(ITEMS[0]), Example("e1", ITEMS[0]), ids + [eos])
    assert pred.verdict == 1 and pred.explanation == "The abstract supports it."
    assert pred.text == "The abstract supports it.\n\nAnswer: TRUE" and pred.id == "e1"
    d = pred.to_dict()
    assert "token_ids" not in d and d["verdict"] == 1
    json.dumps(d)


def test_inputs_are_validated_with_clear_errors(model):
    predictor = Predictor(model, max_new_tokens=2)
    with pytest.raises(ClsgenError, match="--field claim=... --field article_abstract"):
        predictor.predict("a bare text for a two-field task")
    with pytest.raises(ClsgenError, match="'article_abstract' is empty"):
        predictor.predict([{"claim": "c", "article_abstract": "   "}])
    with pytest.raises(ClsgenError, match="no field 'article_abstract'"):
        predictor.predict([{"claim": "c"}])
    with pytest.raises(ClsgenError, match="must be text, got int"):
        predictor.predict_proba([{"claim": "c", "article_abstract": 42}])
    for bad in (None, 3.5, b"bytes"):
        with pytest.raises(ClsgenError, match="expected"):
            predictor.predict([bad])
    single = Predictor(DualHeadModel.from_backbone(tiny_model(), ONE_FIELD), max_new_tokens=2)
    assert single.predict("Patient discharged home.")[0].prompt_tokens > 0
    with pytest.raises(ClsgenError, match="'text' is empty"):
        single.predict("")
    example = Example("x1", {"claim": "c", "article_abstract": "a"})
    assert predictor.predict([example], explain=False)[0].id == "x1"
    assert predictor.predict([{"id": 7, "fields": {"claim": "c", "article_abstract": "a"}}],
                             explain=False)[0].id == "7"


def test_long_inputs_are_truncated_inside_the_fields_never_a_crash(model):
    predictor = Predictor(model, max_new_tokens=4)
    long = {"claim": "Drug X works.", "article_abstract": "No significant difference was observed. " * 400}
    pred = predictor.predict([long, ITEMS[0]])[0]
    assert pred.truncated and pred.prompt_tokens <= TASK.max_prompt_tokens
    assert not predictor.predict([ITEMS[0]])[0].truncated


def test_a_short_context_lowers_the_prompt_and_generation_limits():
    m = _lively(DualHeadModel.from_backbone(tiny_model(), TASK))
    m.causal_lm.config.max_position_embeddings = 160
    predictor = Predictor(m, max_new_tokens=500)
    assert predictor.task.max_prompt_tokens == 160 - 16
    long = {"claim": "Drug X works.", "article_abstract": "Patients improved. " * 300}
    pred = predictor.predict([long], explain=True)[0]
    assert pred.truncated and pred.prompt_tokens <= 144
    assert pred.prompt_tokens + pred.new_tokens <= 160


def test_predictor_restores_the_training_mode(model):
    model.train()
    try:
        Predictor(model, max_new_tokens=2).predict(ITEMS[:1])
        assert model.training
    finally:
        model.eval()


def test_bad_settings_are_reported_together(model):
    with pytest.raises(ClsgenError, match="batch_size.*temperature.*top_p"):
        Predictor(model, batch_size=0, temperature=0.0, top_p=1.5)


def test_from_pretrained_round_trip(tmp_path):
    m = DualHeadModel.from_backbone(tiny_model(), TASK)  # base weights are reproducible from the spec
    with torch.no_grad():
        m.head.linear.bias.fill_(0.3)
    m.meta.update(threshold=0.61, temperature=2.0)
    m.save_pretrained(tmp_path / "m")
    before = Predictor(m, max_new_tokens=6).predict(ITEMS)
    after = Predictor.from_pretrained(tmp_path / "m", max_new_tokens=6).predict(ITEMS)
    for a, b in zip(before, after):
        assert abs(a.probability - b.probability) < 1e-5 and a.token_ids == b.token_ids
        assert b.threshold == 0.61


def test_classifier_wrapper_follows_the_shared_protocol(model, tmp_path):
    clf = ClsgenClassifier(Predictor(model, max_new_tokens=6))
    assert isinstance(clf, Classifier) and isinstance(clf, Explainer)
    examples = [Example(f"e{i}", {**ITEMS[i % 3], "claim": f"claim {i}"}, label=i % 2) for i in range(6)]
    both = clf.predict_proba(examples)
    proba = clf.positive_proba(examples)
    assert both.shape == (6, 2) and proba.shape == (6,)
    np.testing.assert_allclose(both[:, 1], proba) and np.testing.assert_allclose(both.sum(axis=1), 1)
    texts = clf.explain(examples[:2], max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert clf.predictor.max_new_tokens == 6  # restored
    # the rows just explained reuse that prefill's logit: only the others are scored again
    scored = []
    real_logits = clf.predictor.logits
    clf.predictor.logits = lambda items: scored.extend(items) or real_logits(items)
    try:
        reused = clf.positive_proba(examples)
    finally:
        clf.predictor.logits = real_logits
    assert [ex.id for ex in scored] == [ex.id for ex in examples[2:]]
    np.testing.assert_allclose(reused, proba, atol=1e-5)
    assert clf.positive_proba(examples[:1])[0] == pytest.approx(proba[0], abs=1e-5)  # reuse happens once
    saved = dict(model.meta)
    try:
        with pytest.raises(ClsgenError, match="holds a trained model.*calibrate"):
            clf.fit([], examples)  # a trained model is not retrained by a fit that only calibrates
        clf.calibrate(examples)
        assert clf.calibration.n == 6
        assert model.meta["threshold"] == clf.calibration.threshold == clf.threshold
        assert model.meta["temperature"] == clf.calibration.temperature
        with pytest.raises(ClsgenError, match="no model directory"):
            clf.save_calibration()
    finally:
        model.meta.clear()
        model.meta.update(saved)


def test_prediction_dataclass_fields():
    p = Prediction(probability=0.7, label=1, threshold=0.5)
    assert p.explanation is None and p.verdict is None and p.text is None and not p.truncated
    assert set(p.to_dict()) >= {"probability", "label", "threshold", "explanation", "verdict", "text", "logit",
                                "prompt_tokens", "truncated"}


def test_verdict_logits_score_the_verdict_and_the_head_in_one_prefill():
    """Predictor.verdict_logits: the head's logit equals the prompt-only prefill's, the verdict logit
    equals log P(verbalizer 1) - log P(verbalizer 0) after the prefix in a full forward of one row;
    the estimator's verdicts() leaves the head logits for positive_proba to reuse."""
    from clsgen.config import HeadConfig, LoraConfig

    task = Task(name="t", system="Is the note positive?", template="Note: {text}", verbalizers=("NO", "YES"),
                verdict_position="first")
    model = DualHeadModel.from_backbone(tiny_model(num_layers=2, dtype=torch.float32), task, LoraConfig(r=4),
                                        head=HeadConfig(pooling="mean"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    predictor = Predictor(model, batch_size=3)
    texts = ["the patient improved markedly", "no change", "worse outcomes were seen in many", "better"]
    heads, verdicts = predictor.verdict_logits(texts)
    np.testing.assert_allclose(heads, predictor.logits(texts), rtol=0, atol=1e-5)
    for text, v in zip(texts, verdicts):
        fields = {"text": text}
        both = [task.encode_target(model.tokenizer, fields, task.target_text(None, k)) for k in (0, 1)]
        at = next(i for i, (a, b) in enumerate(zip(*both)) if a != b)
        ids = torch.tensor([list(predictor.encode(text).input_ids) + both[0][:at]])
        with torch.no_grad():
            out = model(ids, torch.ones_like(ids), lm_positions="last")
        logp = torch.log_softmax(out.lm_logits[0, -1].float(), -1)
        assert v == pytest.approx(float(logp[both[1][at]] - logp[both[0][at]]), abs=1e-4)
    clf = ClsgenClassifier(predictor)
    examples = [Example(str(i), {"text": t}, i % 2) for i, t in enumerate(texts)]
    assert clf.verdicts(examples) == [int(v > 0) for v in verdicts]
    assert len(clf._explained) == len(texts)  # the next positive_proba reuses these logits
    np.testing.assert_allclose(clf.positive_proba(examples), 1 / (1 + np.exp(-heads)), rtol=0, atol=1e-6)
    with pytest.raises(ClsgenError, match="verdict_position=first"):
        last = Task(name="t", system="Is the note positive?", template="Note: {text}", verbalizers=("NO", "YES"))
        Predictor(DualHeadModel.from_backbone(tiny_model(num_layers=2), last, LoraConfig(r=4))).verdict_logits(texts)


def test_head_conditioned_decoding_states_the_heads_label_then_explains():
    """condition_on_head: each row's turn opens with the verdict line of the label its (calibrated)
    head gives, whatever the LM would write; the rest is decoded as usual after it."""
    from clsgen.config import LoraConfig

    task = Task(name="t", system="Is the note positive?", template="Note: {text}", verbalizers=("NO", "YES"),
                verdict_position="first")
    model = _lively(DualHeadModel.from_backbone(tiny_model(num_layers=2, dtype=torch.float32), task, LoraConfig(r=4)))
    texts = ["the patient improved markedly", "no change", "worse outcomes were seen in many", "better", "x y"]
    free = Predictor(model, batch_size=2, max_new_tokens=12)
    logits = free.logits(texts)
    probs = np.sort(1 / (1 + np.exp(-logits / free.temperature_scale)))
    model.meta["threshold"] = float(probs[1:3].mean())  # both labels occur, no row sits on the threshold
    forced = Predictor(model, batch_size=2, max_new_tokens=12, condition_on_head=True)
    lines = forced.verdict_lines()
    for p, f in zip(free.predict(texts), forced.predict(texts)):
        assert f.probability == pytest.approx(p.probability) and f.label == p.label
        assert f.token_ids[: len(lines[f.label])] == lines[f.label]
        assert f.text.startswith(f"Answer: {task.verbalizers[f.label]}")
    assert {p.label for p in forced.predict(texts)} == {0, 1}
    clf = ClsgenClassifier(forced)
    examples = [Example(str(i), {"text": t}, i % 2) for i, t in enumerate(texts)]
    assert clf.verdicts(examples) == [p.label for p in forced.predict(texts)]
    # free decoding with the verdict first: the verdict prefix opens every turn (forced), then the LM
    # goes on greedily on its own
    for p in free.predict(texts):
        assert p.token_ids[: len(lines[0]) - 1] == lines[0][:-1]
    with pytest.raises(ClsgenError, match="condition_on_head .*verdict_position=last"):
        Predictor(DualHeadModel.from_backbone(tiny_model(num_layers=2), ONE_FIELD, LoraConfig(r=4)),
                  condition_on_head=True)


class _ParityTask(Task):
    """TASK, but its verdict reader reads the parity of the text's length: the random tiny model never
    writes a verdict word, and this lets some draws agree with the label and others not."""

    def parse_verdict(self, text: str | None) -> int | None:
        return None if text is None else len(text) % 2


class _NeverTask(Task):
    """TASK, but no text states a verdict."""

    def parse_verdict(self, text: str | None) -> int | None:
        return None


def test_rejection_sampling_redraws_only_disagreeing_rows_and_keeps_the_first_when_none_agrees(model):
    """rejection_samples=k: a row whose first (greedy) explanation states its label is left alone; one
    that does not is sampled again until a draw agrees (kept, with the draw's number), or k were made
    (the first kept). Probability and label are the first prefill's; first_verdict is what the first said."""
    items = [{**ITEMS[i % 3], "claim": f"claim {i} " + "x " * i} for i in range(8)]
    k = 4
    plain = Predictor(model, batch_size=3, max_new_tokens=N_NEW)
    redraw = Predictor(model, batch_size=3, max_new_tokens=N_NEW, rejection_samples=k, rejection_temperature=1.5,
                       seed=5)
    for predictor in (plain, redraw):
        predictor.task = _ParityTask(**{f: getattr(predictor.task, f) for f in TASK.__dataclass_fields__})
    first, kept = plain.predict(items), redraw.predict(items)
    outcomes = []
    for f, r in zip(first, kept):
        assert r.probability == pytest.approx(f.probability) and r.label == f.label and r.logit == f.logit
        assert r.first_verdict == f.verdict and f.draws == 1
        if f.verdict == f.label:
            outcomes.append("first agreed")
            assert r.draws == 1 and r.token_ids == f.token_ids
        elif r.verdict == r.label:
            outcomes.append("redraw agreed")
            assert 2 <= r.draws <= k and r.token_ids != f.token_ids
        else:
            outcomes.append("none agreed")
            assert r.draws == k and r.token_ids == f.token_ids and r.verdict == f.verdict
    assert {"first agreed", "redraw agreed"} <= set(outcomes), outcomes
    assert [p.token_ids for p in redraw.predict(items)] == [p.token_ids for p in kept]  # seeded
    # a model that never states the label: every row drawn k times, the first kept
    never = Predictor(model, batch_size=3, max_new_tokens=N_NEW, rejection_samples=3)
    never.task = _NeverTask(**{f: getattr(never.task, f) for f in TASK.__dataclass_fields__})
    for f, r in zip(first, never.predict(items)):
        assert r.draws == 3 and r.token_ids == f.token_ids and r.verdict is None and r.first_verdict is None
    # the classifier wrapper reports the draws to evaluation
    clf = ClsgenClassifier(redraw)
    clf.explain([Example(str(i), it, 0) for i, it in enumerate(items)], max_new_tokens=N_NEW)
    assert clf.draws == [p.draws for p in kept] and clf.first_verdicts == [p.first_verdict for p in kept]
    plain_clf = ClsgenClassifier(plain)
    plain_clf.explain([Example("0", items[0], 0)], max_new_tokens=N_NEW)
    assert plain_clf.draws is None and plain_clf.first_verdicts is None
    with pytest.raises(ClsgenError, match="rejection_samples must be >= 1.*rejection_temperature"):
        Predictor(model, rejection_samples=0, rejection_temperature=0)
