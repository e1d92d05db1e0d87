"""Baselines: prompting (verbalizer scoring, batching, generation), CNN, TF-IDF, and the registry."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from clsgen.backbones import tiny_model
from clsgen.baselines import make_baseline
from clsgen.baselines.cnn import CnnClassifier, words
from clsgen.baselines.prompting import (
    DEFAULT_PREFIX,
    PromptingClassifier,
    explanation_prefix,
    generate_explanations,
    probability_of_one,
    verbalizer_continuations,
    verbalizer_log_probs,
)
from clsgen.baselines.tfidf import TfidfClassifier
from clsgen.classifier import Classifier, Explainer
from clsgen.data import Example
from clsgen.errors import ClsgenError
from clsgen.metrics import auroc
from clsgen.task import Task

TASK = Task(name="toy", system="Decide whether the abstract supports the claim.",
            template="Claim: {claim}\nAbstract: {abstract}", verbalizers=("FALSE", "TRUE"))
# Verbalizers of different token lengths after "Answer: " with the tiny tokenizer.
LONG_TASK = Task(name="toy-long", system=TASK.system, template=TASK.template,
                 verbalizers=("FALSE", "probably not supported"))


@pytest.fixture(scope="module")
def lm():
    """A tiny random Llama whose LM head is untied and random, so greedy decoding varies (the tied
    random model only repeats its last token)."""
    bb = tiny_model(seed=0)
    g = torch.Generator().manual_seed(0)
    bb.model.lm_head.weight = torch.nn.Parameter(torch.randn(bb.model.lm_head.weight.shape, generator=g))
    return bb


def _examples(n: int) -> list[Example]:
    texts = ["patients improved", "no significant difference in the primary outcome was observed",
             "treatment versus placebo", "the abstract does not support the claim at all, p < 0.05",
             "improved", "randomised patients improved versus placebo (p < 0.05) and more"]
    return [Example(str(i), {"claim": texts[i % len(texts)],
                             "abstract": texts[(i * 5 + 1) % len(texts)] * (1 + i % 3)}) for i in range(n)]


def _manual_log_prob(model, tokenizer, task: Task, ex: Example, prefix: str, label: int) -> float:
    """Sum of the verbalizer's token log-probs from one unpadded full-sequence forward pass."""
    prompt = task.encode_prompt(tokenizer, ex.fields).input_ids
    seqs = [tokenizer(prefix + v, add_special_tokens=False)["input_ids"] for v in task.verbalizers]
    shared = 0
    while shared < min(map(len, seqs)) - 1 and seqs[0][shared] == seqs[1][shared]:
        shared += 1
    full = prompt + seqs[label]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
    start = len(prompt) + shared
    return float(sum(logp[t - 1, full[t]] for t in range(start, len(full))))


# ---------------------------------------------------------------------------- prompting


def test_verbalizer_tokens_come_from_joint_tokenization(lm):
    tok = lm.tokenizer
    shared, conts = verbalizer_continuations(tok, DEFAULT_PREFIX, ("FALSE", "TRUE"))
    joint = tok("Answer: TRUE", add_special_tokens=False)["input_ids"]
    assert shared + conts[1] == joint
    assert tok.decode(conts[1]) == " TRUE"  # the space merged into the verbalizer's first token
    separate = [*tok("Answer: ", add_special_tokens=False)["input_ids"],
                *tok("TRUE", add_special_tokens=False)["input_ids"]]
    assert separate != joint  # why pieces must not be tokenized separately


def test_multi_token_verbalizers_match_manual_full_sequence_scores(lm):
    _, conts = verbalizer_continuations(lm.tokenizer, DEFAULT_PREFIX, LONG_TASK.verbalizers)
    assert len(conts[0]) != len(conts[1]) and max(map(len, conts)) > 2
    examples = _examples(3)
    got = verbalizer_log_probs(lm.model, lm.tokenizer, LONG_TASK, examples, batch_size=2)
    want = [[_manual_log_prob(lm.model, lm.tokenizer, LONG_TASK, ex, DEFAULT_PREFIX, k) for k in (0, 1)]
            for ex in examples]
    np.testing.assert_allclose(got, want, atol=1e-4)
    # and with a per-example prefix (the path used after an explanation)
    fn = lambda ex: f"Because {ex.fields['claim']}.\n\n{DEFAULT_PREFIX}"
    got = verbalizer_log_probs(lm.model, lm.tokenizer, TASK, examples[:2], prefix_text_fn=fn)
    want = [[_manual_log_prob(lm.model, lm.tokenizer, TASK, ex, fn(ex), k) for k in (0, 1)] for ex in examples[:2]]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("task", [TASK, LONG_TASK], ids=["single-token", "multi-token"])
def test_batched_scores_equal_single_example_scores(lm, task):
    examples = _examples(5)  # prompts of different lengths: left padding in every batch
    batched = verbalizer_log_probs(lm.model, lm.tokenizer, task, examples, batch_size=4)
    single = np.array([verbalizer_log_probs(lm.model, lm.tokenizer, task, [ex], batch_size=1)[0] for ex in examples])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_scores_a_peft_wrapped_model_like_its_base(lm):
    """The generation-only baseline scores its fine-tuned (PEFT) LM with the same function."""
    import copy

    from peft import LoraConfig, get_peft_model

    peft_lm = get_peft_model(copy.deepcopy(lm.model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    examples = _examples(3)
    np.testing.assert_allclose(verbalizer_log_probs(peft_lm, lm.tokenizer, LONG_TASK, examples),
                               verbalizer_log_probs(lm.model, lm.tokenizer, LONG_TASK, examples), atol=1e-5)


def test_prompting_predict_proba_shape_range_and_softmax(lm):
    clf = PromptingClassifier(lm, TASK, batch_size=3)
    assert isinstance(clf, Classifier) and isinstance(clf, Explainer)
    examples = _examples(4)
    assert clf.fit(examples, examples) is clf
    both = clf.predict_proba(examples)  # like scikit-learn: columns for labels 0 and 1
    p = clf.positive_proba(examples)
    assert both.shape == (4, 2) and list(clf.classes_) == [0, 1]
    np.testing.assert_allclose(both, np.column_stack([1 - p, p]))
    assert p.shape == (4,) and p.dtype == np.float64 and np.all((p > 0) & (p < 1))
    lp = clf.log_probs(examples)
    np.testing.assert_allclose(p, np.exp(lp[:, 1]) / np.exp(lp).sum(axis=1), rtol=1e-9)
    np.testing.assert_allclose(probability_of_one(np.array([[-1000.0, 0.0], [0.0, -1000.0]])), [1.0, 0.0])


def _greedy_reference(model, tokenizer, task, ex, max_new_tokens, eos):
    ids = task.encode_prompt(tokenizer, ex.fields).input_ids
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt in eos:
                break
            new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_explain_batched_greedy_matches_reference_and_stops_at_eos(lm):
    examples = _examples(3)
    first = generate_explanations(lm.model, lm.tokenizer, TASK, examples[:1], max_new_tokens=12)[0]
    # make a token that the first explanation writes an end-of-sequence token, so it must stop early
    stop = lm.tokenizer(first, add_special_tokens=False)["input_ids"][3]
    config = lm.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [lm.tokenizer.eos_token_id, stop]
    try:
        texts = PromptingClassifier(lm, TASK, batch_size=3).explain(examples, max_new_tokens=12)
        want = [_greedy_reference(lm.model, lm.tokenizer, TASK, ex, 12, {lm.tokenizer.eos_token_id, stop})
                for ex in examples]
    finally:
        config.eos_token_id = saved
    assert texts == want
    assert len(lm.tokenizer(texts[0], add_special_tokens=False)["input_ids"]) < 12


def test_with_the_verdict_first_the_explanation_opens_as_the_trained_models_do(lm):
    import dataclasses

    first = dataclasses.replace(TASK, verdict_position="first")
    opening = first.opening(lm.tokenizer)
    assert lm.tokenizer.decode(opening).strip() == "Answer:"  # the verdict line up to its verdict token
    assert TASK.opening(lm.tokenizer) == []  # verdict last: the turn opens freely
    examples = _examples(2)
    texts = generate_explanations(lm.model, lm.tokenizer, first, examples, max_new_tokens=5)
    continued = []
    for ex in examples:  # the greedy continuation of the prompt followed by the opening
        ids = list(first.encode_prompt(lm.tokenizer, ex.fields).input_ids) + opening
        with torch.no_grad():
            nxt = int(lm.model(torch.tensor([ids])).logits[0, -1].argmax())
        continued.append(nxt)
    for text, nxt in zip(texts, continued):
        assert text.startswith("Answer:")
        assert lm.tokenizer.decode(opening + [nxt]).strip() in text


def test_explanation_scoring_scores_after_the_explanation_body(lm):
    examples = _examples(2)
    clf = PromptingClassifier(lm, TASK, batch_size=2, max_new_tokens=6, scoring="explanation")
    texts = clf.explain(examples)
    want = verbalizer_log_probs(lm.model, lm.tokenizer, TASK, examples,
                                prefix_text_fn=lambda ex: explanation_prefix(texts[int(ex.id)]))
    np.testing.assert_allclose(clf.log_probs(examples), want, atol=1e-4)
    assert explanation_prefix("It holds.\n\nAnswer: TRUE") == "It holds.\n\nAnswer: "
    assert explanation_prefix("") == DEFAULT_PREFIX


def test_prompting_errors_are_clear(lm):
    clf = PromptingClassifier(lm, TASK)
    with pytest.raises(ClsgenError, match="no examples"):
        clf.predict_proba([])
    with pytest.raises(ClsgenError, match="no examples"):
        clf.explain([])
    with pytest.raises(ClsgenError, match="needs a task"):
        PromptingClassifier(lm)
    with pytest.raises(ClsgenError, match="scoring"):
        PromptingClassifier(lm, TASK, scoring="chain-of-thought")
    same = Task(name="same", system="", template="{claim}", verbalizers=("YES", "YES"))
    with pytest.raises(ClsgenError, match="identically"):
        verbalizer_log_probs(lm.model, lm.tokenizer, same, [Example("1", {"claim": "x"})])


# ---------------------------------------------------------------------------- cnn and tfidf

FILLER = ["the", "patients", "were", "randomised", "to", "treatment", "or", "placebo", "and", "followed", "for",
          "twelve", "months", "with", "outcomes", "measured", "at", "baseline", "visits", "trial", "results",
          "showed", "changes", "in", "scores", "across", "groups"]


def _keyword_split(n: int, seed: int) -> list[Example]:
    """Label 1 iff the abstract contains 'remission' (negatives: 'relapse'), amid random filler."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2
        body = [rng.choice(FILLER) for _ in range(rng.randint(8, 30))]
        body.insert(rng.randint(0, len(body)), "remission" if label else "relapse")
        out.append(Example(f"{seed}-{i}", {"claim": " ".join(rng.choice(FILLER) for _ in range(5)),
                                           "abstract": " ".join(body)}, label))
    return out


@pytest.fixture(scope="module")
def keyword_data():
    return _keyword_split(160, 1), _keyword_split(40, 2), _keyword_split(80, 3)


def test_tfidf_learns_keyword_and_picks_c_on_dev(keyword_data):
    train, dev, test = keyword_data
    clf = TfidfClassifier(task=TASK).fit(train, dev)
    p = clf.positive_proba(test)
    assert p.shape == (80,) and np.all((p >= 0) & (p <= 1))
    # the same two columns scikit-learn's own LogisticRegression gives on these features
    np.testing.assert_allclose(clf.predict_proba(test),
                               clf.model_.predict_proba(clf.vectorizer_.transform(clf._texts(test))))
    assert auroc([ex.label for ex in test], p) > 0.9
    assert clf.C_ in clf.C_grid and set(clf.dev_auroc_) == set(clf.C_grid)
    assert clf.dev_auroc_[clf.C_] == max(clf.dev_auroc_.values())
    np.testing.assert_array_equal(p, TfidfClassifier(task=TASK).fit(train, dev).positive_proba(test))


def _small_cnn(seed: int = 0) -> CnnClassifier:
    return CnnClassifier(embedding_dim=16, n_filters=8, max_epochs=8, patience=2, lr=1e-2, seed=seed)


def test_cnn_learns_keyword_and_is_deterministic(keyword_data):
    train, dev, test = keyword_data
    before = torch.random.get_rng_state()
    clf = _small_cnn().fit(train, dev)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone
    p = clf.positive_proba(test)
    assert p.shape == (80,) and np.all((p > 0) & (p < 1))
    assert clf.predict_proba(test).shape == (80, 2) and np.allclose(clf.predict_proba(test).sum(axis=1), 1)
    assert auroc([ex.label for ex in test], p) > 0.9
    assert 1 <= clf.best_epoch_ <= len(clf.history_) <= 8
    np.testing.assert_array_equal(p, _small_cnn().fit(train, dev).positive_proba(test))
    assert not np.array_equal(p, _small_cnn(seed=1).fit(train, dev).positive_proba(test))
    # max-pooling only over windows inside the text: a score does not depend on its batch's padding
    alone = np.array([clf.positive_proba([ex])[0] for ex in test[:5]])
    np.testing.assert_allclose(p[:5], alone, rtol=1e-6)


def test_cnn_tokenizer_keeps_numbers_and_symbols():
    assert words("Improved (p<0.05), HR 0.8!") == ["improved", "(", "p", "<", "0.05", ")", ",", "hr", "0.8", "!"]


@pytest.mark.parametrize("name", ["cnn", "tfidf"])
def test_bag_of_words_errors_are_clear(name, keyword_data):
    train, dev, _ = keyword_data
    clf = make_baseline(name)
    with pytest.raises(ClsgenError, match="before fit"):
        clf.predict_proba(dev)
    with pytest.raises(ClsgenError, match="no examples"):
        clf.fit([], dev)
    with pytest.raises(ClsgenError, match="both labels"):
        clf.fit([ex for ex in train if ex.label == 1], dev)
    with pytest.raises(ClsgenError, match="no label"):
        clf.fit([Example("x", {"claim": "a", "abstract": "b"})] + train, dev)
    clf = make_baseline(name, **({"max_epochs": 1} if name == "cnn" else {})).fit(train, [])  # no dev: no selection
    with pytest.raises(ClsgenError, match="no examples"):
        clf.predict_proba([])


# ---------------------------------------------------------------------------- registry


def test_registry_builds_each_baseline_and_rejects_unknown(lm):
    assert isinstance(make_baseline("tfidf", C_grid=(1.0,)), TfidfClassifier)
    assert isinstance(make_baseline("cnn", seed=3), CnnClassifier)
    assert isinstance(make_baseline("prompting", backbone_or_spec=lm, task=TASK), PromptingClassifier)
    for name in ("tfidf", "cnn", "prompting"):
        assert make_baseline(name, **({"task": TASK} if name == "prompting" else {})).name == name
    with pytest.raises(ClsgenError, match="unknown baseline 'bert'"):
        make_baseline("bert")
    with pytest.raises(ClsgenError, match="does not accept"):
        make_baseline("tfidf", n_filters=3)


def test_importing_baselines_does_no_work():
    code = ("import sys, clsgen.baselines; "
            "print(sorted(m for m in ('torch', 'sklearn', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- the real embedded model


@pytest.mark.slow
def test_prompting_with_embedded_model_scores_multi_token_verbalizers(embedded):
    tok = embedded.tokenizer
    _, conts = verbalizer_continuations(tok, DEFAULT_PREFIX, ("FALSE", "TRUE"))
    assert tok.convert_ids_to_tokens(conts[1]) == ["ĠTR", "UE"]  # " TRUE" is two tokens in SmolLM2
    assert len(conts[0]) == 3  # " FALSE": F, AL, SE
    task = Task(name="short", system="Does the abstract support the claim? Answer TRUE or FALSE.",
                template=TASK.template, verbalizers=("FALSE", "TRUE"))
    examples = [Example("a", {"claim": "Drug X lowers blood pressure.",
                              "abstract": "Drug X lowered systolic blood pressure by 12 mmHg versus placebo "
                                          "(p < 0.001)."}),
                Example("b", {"claim": "Drug Y improves survival.", "abstract": "No difference in survival."})]
    batched = verbalizer_log_probs(embedded.model, tok, task, examples, batch_size=2)  # left-padded
    want = [_manual_log_prob(embedded.model, tok, task, examples[1], DEFAULT_PREFIX, k) for k in (0, 1)]
    np.testing.assert_allclose(batched[1], want, atol=1e-3)  # the shorter prompt: padded in the batch
    assert np.all(np.isfinite(batched)) and np.all(batched < 0)
