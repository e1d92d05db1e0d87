"""Tests for clsgen.metrics, checked against scikit-learn and hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from clsgen.metrics import (
    MetricResult,
    UndefinedMetricError,
    accuracy,
    alignment_auroc,
    alignment_kappa,
    apply_temperature,
    auprc,
    auroc,
    bootstrap_ci,
    brier,
    choose_threshold,
    cohen_kappa,
    compute_metrics,
    ece,
    explanation_quality,
    f1,
    fit_temperature,
    flesch,
    flesch_reading_ease,
    inconsistency_rate,
    logit,
    readability,
    redraw_metrics,
    sigmoid,
)

ALL_KEYS = {
    "auroc",
    "auprc",
    "f1",
    "accuracy",
    "ece",
    "brier",
    "alignment_auroc",
    "alignment_kappa",
    "inconsistency_rate",
    "readability",
    "flesch",
}
PROSE = (
    "The abstract reports a randomized trial in which the drug lowered blood pressure compared "
    "with placebo, which is what the claim states."
)


def _data(seed: int, ties: bool = False, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(40, 300))
    p = rng.random(n)
    if ties:
        p = np.round(p, 1)
    y = rng.binomial(1, 0.15 + 0.7 * p)
    return y, p


def _verdicts(seed: int, y_hat: np.ndarray) -> list[int | None]:
    rng = np.random.default_rng(seed + 100)
    e: list[int | None] = [int(v) if rng.random() > 0.15 else 1 - int(v) for v in y_hat]
    return [None if rng.random() < 0.1 else v for v in e]


# ------------------------------------------------------------------------ against scikit-learn


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_probability_metrics_match_sklearn(seed, ties):
    y, p = _data(seed, ties)
    assert auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert auprc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_label_metrics_match_sklearn(seed):
    y, p = _data(seed)
    y_hat = (p >= 0.4 + 0.05 * seed).astype(int)
    assert f1(y, y_hat) == pytest.approx(skm.f1_score(y, y_hat), abs=1e-12)
    assert accuracy(y, y_hat) == pytest.approx(skm.accuracy_score(y, y_hat), abs=1e-12)
    assert cohen_kappa(y, y_hat) == pytest.approx(skm.cohen_kappa_score(y, y_hat), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_alignment_metrics_match_sklearn(seed):
    y, p = _data(seed)
    y_hat = (p >= 0.5).astype(int)
    e = _verdicts(seed, y_hat)
    mask = np.array([v is not None for v in e])
    present = np.array([v for v in e if v is not None])
    assert alignment_auroc(p, e) == pytest.approx(skm.roc_auc_score(present, p[mask]), abs=1e-12)
    assert alignment_kappa(y_hat, e) == pytest.approx(skm.cohen_kappa_score(y_hat[mask], present), abs=1e-12)
    expected = np.mean([v is None or v != h for v, h in zip(e, y_hat)])
    assert inconsistency_rate(y_hat, e) == pytest.approx(expected)


def test_cohen_kappa_accepts_any_labels():
    a, b = ["x", "y", "x", "z"], ["x", "y", "y", "z"]
    assert cohen_kappa(a, b) == pytest.approx(skm.cohen_kappa_score(a, b))


# ------------------------------------------------------------------------------------ ece


def test_ece_hand_computed():
    # bins of width 1/15: 0.1 -> bin 1, 0.3 -> bin 4, 0.9 -> bin 13, {0.95, 0.99, 1.0} -> bin 14
    # (1/6)|0-0.1| + (1/6)|0-0.3| + (1/6)|1-0.9| + (3/6)|2/3-0.98| = 0.08333 + 0.15667 = 0.24
    y = [0, 0, 1, 1, 0, 1]
    p = [0.1, 0.3, 0.9, 0.95, 0.99, 1.0]
    assert ece(y, p) == pytest.approx(0.24)


def test_ece_one_bin_is_calibration_in_the_large_and_perfect_bins_give_zero():
    y, p = _data(3)
    assert ece(y, p, n_bins=1) == pytest.approx(abs(y.mean() - p.mean()))
    assert ece([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)
    assert ece([1], [1.0]) == 0.0  # 1.0 falls in the last (closed) bin


# ------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("seed", range(3))
def test_max_f1_threshold_is_best_distinct_value(seed):
    y, p = _data(seed, ties=seed == 2)
    tau = choose_threshold(y, p, "max_f1")
    assert tau in set(p.tolist())
    best = max(skm.f1_score(y, (p >= t).astype(int)) for t in np.unique(p))
    assert skm.f1_score(y, (p >= tau).astype(int)) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(3))
def test_youden_threshold_maximizes_tpr_minus_fpr(seed):
    y, p = _data(seed)
    fpr, tpr, thresholds = skm.roc_curve(y, p, drop_intermediate=False)
    tau = choose_threshold(y, p, "youden")
    j = tpr - fpr
    assert tau == pytest.approx(thresholds[np.argmax(j)])


def test_threshold_separable_ties_fixed_and_bad_method():
    y = [0, 0, 1, 1]
    p = [0.1, 0.3, 0.6, 0.8]
    assert choose_threshold(y, p, "max_f1") == 0.6
    assert choose_threshold(y, p, "youden") == 0.6
    # F1 is 2/3 at both 0.9 and 0.1: the larger threshold wins
    assert choose_threshold([1, 0, 0, 1], [0.9, 0.6, 0.5, 0.1], "max_f1") == 0.9
    assert choose_threshold(y, p, "fixed", fixed=0.42) == 0.42
    with pytest.raises(ValueError, match="max_f1"):
        choose_threshold(y, p, "best")
    with pytest.raises(UndefinedMetricError):
        choose_threshold([0, 0], [0.2, 0.4], "youden")


# ------------------------------------------------------------------------ temperature


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.0])
def test_fit_temperature_recovers_known_temperature(true_t):
    rng = np.random.default_rng(7)
    z = rng.normal(0.0, 3.0, size=20_000)
    y = rng.binomial(1, sigmoid(z / true_t))
    assert fit_temperature(y, z) == pytest.approx(true_t, rel=0.15)  # T=2 within 0.3


def test_apply_temperature_and_logit():
    z = np.array([-30.0, -2.0, 0.0, 1.5, 40.0])
    assert np.allclose(apply_temperature(z, 1.0), 1 / (1 + np.exp(-z)))
    assert np.allclose(apply_temperature(z, 2.0), sigmoid(z / 2))
    assert np.allclose(logit(sigmoid(np.array([-3.0, 0.0, 3.0]))), [-3.0, 0.0, 3.0])
    assert np.all(np.isfinite(sigmoid([-1e4, 1e4])))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(z, 0.0)


def test_fit_temperature_separable_data_hits_lower_bound():
    assert fit_temperature([0, 1], [-5.0, 5.0], t_min=0.01) == pytest.approx(0.01, rel=1e-3)


# -------------------------------------------------------------------- undefined cases


@pytest.mark.parametrize(
    "call, note",
    [
        (lambda: auroc([1, 1, 1], [0.2, 0.5, 0.9]), "one class"),
        (lambda: auprc([0, 0], [0.2, 0.5]), "no positive"),
        (lambda: f1([0, 0], [0, 0]), "no positive"),
        (lambda: accuracy([], []), "no rows"),
        (lambda: cohen_kappa([1, 1], [1, 1]), "single label"),
        (lambda: cohen_kappa([0, 0, 0, 0], [0, 1, 0, 1]), "degenerate"),  # sklearn says 0.0: reads as chance
        (lambda: alignment_auroc([0.2, 0.8], [None, None]), "no rows"),
        (lambda: flesch_reading_ease("123 456"), "no words"),
        (lambda: flesch([None, ""]), "no explanation"),
    ],
)
def test_undefined_metrics_raise_undefined(call, note):
    with pytest.raises(UndefinedMetricError, match=note):
        call()


def test_compute_metrics_one_class_gives_none_with_note_never_nan():
    y = np.ones(20, dtype=int)
    p = np.linspace(0.05, 0.95, 20)
    out = compute_metrics(y, p, 0.5, n_boot=50)
    assert set(out) == ALL_KEYS
    assert out["auroc"].value is None and "only one class" in out["auroc"].note
    assert out["accuracy"].value == pytest.approx(0.5)
    assert out["alignment_kappa"].value is None and "no verdicts" in out["alignment_kappa"].note
    assert out["readability"].value is None and "no explanations" in out["readability"].note
    json.dumps({k: r.to_dict() for k, r in out.items()}, allow_nan=False)


def test_compute_metrics_no_rows():
    out = compute_metrics([], [], 0.5, verdicts=[], explanations=[], n_boot=10)
    assert set(out) == ALL_KEYS
    assert all(r.value is None and r.note for r in out.values())


def test_invalid_inputs_raise_value_error():
    with pytest.raises(ValueError, match="same number of rows"):
        compute_metrics([0, 1], [0.5], 0.5)
    with pytest.raises(ValueError, match="only 0 and 1"):
        compute_metrics([0, 2], [0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_metrics([0, 1], [0.5, 1.5], 0.5)
    with pytest.raises(ValueError, match="same number of rows"):
        compute_metrics([0, 1], [0.5, 0.5], 0.5, verdicts=[1])


# -------------------------------------------------------------------------- bootstrap


def test_bootstrap_contains_estimate_narrows_and_is_deterministic():
    small_y, small_p = _data(1, n=60)
    big_y, big_p = _data(1, n=2000)
    small = bootstrap_ci(auroc, small_y, small_p, n=300, seed=0)
    big = bootstrap_ci(auroc, big_y, big_p, n=300, seed=0)
    assert small[0] <= auroc(small_y, small_p) <= small[1]
    assert big[0] <= auroc(big_y, big_p) <= big[1]
    assert big[1] - big[0] < (small[1] - small[0]) / 2
    assert bootstrap_ci(auroc, small_y, small_p, n=300, seed=0) == small
    assert bootstrap_ci(auroc, small_y, small_p, n=300, seed=1) != small


def test_bootstrap_skips_undefined_resamples():
    y, p = [0, 1, 1], [0.2, 0.4, 0.9]  # many resamples hold one class only
    low, high = bootstrap_ci(auroc, y, p, n=200)
    assert 0.0 <= low <= high <= 1.0
    assert bootstrap_ci(auroc, [1, 1], [0.1, 0.2], n=50) == (None, None)
    assert bootstrap_ci(lambda a: float("nan"), [1, 2], n=20) == (None, None)


def test_bootstrap_resamples_rows_jointly_with_none_entries():
    y_hat = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    e = [1, 0, None, 0, 0, 1, 1, None]
    low, high = bootstrap_ci(inconsistency_rate, y_hat, e, n=200)
    assert low <= inconsistency_rate(y_hat, e) <= high


# ----------------------------------------------------------------------- compute_metrics


def test_compute_metrics_matches_individual_metrics():
    y, p = _data(4, n=200)
    tau = choose_threshold(y, p)
    y_hat = (p >= tau).astype(int)
    e = _verdicts(4, y_hat)
    out = compute_metrics(y, p, tau, verdicts=e, n_boot=100)
    assert out["auroc"].value == pytest.approx(skm.roc_auc_score(y, p))
    assert out["f1"].value == pytest.approx(skm.f1_score(y, y_hat))
    assert out["brier"].n == 200
    assert out["alignment_kappa"].value == pytest.approx(alignment_kappa(y_hat, e))
    assert out["alignment_auroc"].n == sum(v is not None for v in e)
    assert out["inconsistency_rate"].n == 200
    for name in ("auroc", "auprc", "f1", "accuracy", "ece", "brier", "alignment_auroc", "inconsistency_rate"):
        r = out[name]
        assert r.low <= r.value <= r.high, name
    assert out["readability"].note == "undefined: no explanations given"


def test_compute_metrics_with_explanations_excludes_rows_without_one():
    y = [1, 0, 1, 0, 1, 0]
    p = [0.9, 0.2, 0.7, 0.6, 0.4, 0.1]  # tau 0.5 -> y_hat 1 0 1 1 0 0
    explanations = [
        f"{PROSE}\nAnswer: TRUE",
        f"{PROSE}\nAnswer: FALSE",
        f"{PROSE}\nAnswer: FALSE",  # disagrees with y_hat
        "no no no no no no no no\nAnswer: TRUE",  # degenerate
        None,  # no explanation: excluded
        PROSE,  # no verdict line
    ]
    verdicts = [1, 0, 0, 1, None, None]
    out = compute_metrics(y, p, 0.5, verdicts=verdicts, explanations=explanations, n_boot=50)
    assert out["inconsistency_rate"].n == 5
    assert out["inconsistency_rate"].value == pytest.approx(2 / 5)
    assert out["readability"].n == 5
    assert out["readability"].value == pytest.approx(3 / 5)  # rows 0-2; 3 loops, 5 lacks a verdict
    assert out["alignment_kappa"].n == 4
    assert out["alignment_kappa"].value == pytest.approx(skm.cohen_kappa_score([1, 0, 1, 1], [1, 0, 0, 1]))
    assert out["flesch"].n == 5
    # without verdicts, readability looks for the answer line itself
    alone = compute_metrics(y, p, 0.5, explanations=explanations, n_boot=0)
    assert alone["readability"].value == pytest.approx(3 / 5)
    assert alone["alignment_auroc"].value is None
    assert alone["auroc"].low is None and alone["auroc"].value is not None


def test_metric_result_to_dict():
    d = MetricResult(np.float64(0.5), 0.4, 0.6, n=np.int64(10)).to_dict()
    assert d == {"value": 0.5, "low": 0.4, "high": 0.6, "n": 10, "note": None}
    assert type(d["value"]) is float and type(d["n"]) is int
    assert MetricResult(None, note="undefined: no rows").to_dict()["value"] is None


# ---------------------------------------------------------------------------- readability


@pytest.mark.parametrize(
    "text, verdict, flag",
    [
        (f"{PROSE}\nAnswer: TRUE", 1, "readable"),
        ("Answer: TRUE", 1, "empty"),
        ("", None, "empty"),
        (None, None, "empty"),
        (PROSE, None, "missing_verdict"),
        (f"{PROSE} " + "The claim is true. " * 3 + "\nAnswer: TRUE", 1, "degenerate"),
        ("The drug works.\nThe drug works.\nThe drug works.\nAnswer: TRUE", 1, "degenerate"),
        ("The results show that " + "true " * 5 + "\nAnswer: TRUE", 1, "degenerate"),
        ("It is " + "hahaha" * 10 + " funny.\nAnswer: TRUE", 1, "degenerate"),
        ("so so so it goes so so so it goes so so so it goes\nAnswer: TRUE", 1, "degenerate"),
        ("a b c d a b c d a b c d a b c d\nAnswer: TRUE", 1, "degenerate"),
        ("True.\nAnswer: TRUE", 1, "not_prose"),
        ("12 34 56 78 90 ## 11.2 (p<0.05) == 44 55 ok\nAnswer: TRUE", 1, "not_prose"),
    ],
)
def test_explanation_quality_flags(text, verdict, flag):
    q = explanation_quality(text, verdict)
    assert set(q) == {"empty", "missing_verdict", "degenerate", "not_prose", "readable"}
    assert q[flag] is True
    if flag != "readable":
        assert q["readable"] is False


def test_realistic_explanations_are_not_degenerate():
    text = (
        "The claim says the drug reduces mortality. The abstract reports a randomized trial of 400 "
        "patients in which mortality was 12% with the drug and 18% with placebo (HR 0.64, 95% CI "
        "0.45-0.91). The difference is statistically significant, and the trial was designed to "
        "measure mortality. The drug reduces mortality in this population, so the abstract supports "
        "the claim.\nAnswer: TRUE"
    )
    q = explanation_quality(text, 1)
    assert q["readable"], q


def test_readability_share():
    texts = [f"{PROSE}\nAnswer: TRUE", "", f"{PROSE}\nAnswer: FALSE", "word " * 20]
    assert readability(texts, [1, None, 0, None]) == pytest.approx(0.5)


# --------------------------------------------------------------------------------- flesch


def test_flesch_hand_computed():
    # 6 words, 1 sentence, 6 syllables: 206.835 - 1.015 * 6 - 84.6 * 1
    assert flesch_reading_ease("The cat sat on the mat.") == pytest.approx(116.145)
    # 10 words, 2 sentences, 11 syllables (read-ing = 2): 206.835 - 1.015 * 5 - 84.6 * 1.1
    assert flesch_reading_ease("The cat sat on the mat. Reading books is fun.") == pytest.approx(108.7)
    # silent final e (are, make) and -le (table): 4 words, 1 sentence, 1+1+1+2 syllables
    assert flesch_reading_ease("We make are table") == pytest.approx(206.835 - 1.015 * 4 - 84.6 * 5 / 4)


def test_flesch_mean_skips_empty_and_strips_verdict_line():
    texts = ["The cat sat on the mat.\nAnswer: TRUE", None, "", "Reading books is fun."]
    expected = np.mean([116.145, flesch_reading_ease("Reading books is fun.")])
    assert flesch(texts) == pytest.approx(expected)
    assert math.isfinite(flesch(["Answer: TRUE", "One two three."]))


def test_flesch_counts_syllables_with_the_hyphenation_dictionary():
    """Syllables from pyphen's en_US dictionary, as textstat counts them without CMUdict: the old
    vowel-group counter said 2 for 'created' and 3 for 'improved'."""
    import pyphen

    from clsgen.readability import _syllables

    assert (_syllables("created"), _syllables("improved"), _syllables("table"), _syllables("the")) == (3, 2, 2, 1)
    dic = pyphen.Pyphen(lang="en_US")
    for word in ("randomised", "significant", "outcome", "Patients"):
        assert _syllables(word) == len(dic.positions(word.lower())) + 1
    text = "Patients randomised to placebo improved. The outcome was significant."
    words, sentences = 9, 2
    syllables = sum(_syllables(w) for w in text.replace(".", "").split())
    assert flesch_reading_ease(text) == pytest.approx(206.835 - 1.015 * words / sentences - 84.6 * syllables / words)


def test_redraw_metrics_count_draws_and_read_the_first_draws():
    y_hat = np.array([1, 0, 1, 0])
    m = redraw_metrics(y_hat, first_verdicts=[1, 1, None, 0], draws=[1, 3, 4, 1], n_boot=50)
    assert m["draws"].value == pytest.approx(2.25) and m["draws"].n == 4
    assert m["first_draw_inconsistency"].value == pytest.approx(0.5)  # row 2 disagrees, row 3 states none
    assert m["draws"].low <= 2.25 <= m["draws"].high
    with pytest.raises(ValueError):
        redraw_metrics(y_hat, first_verdicts=[1], draws=[1, 1, 1, 1])
