"""clsgen.stance: the body-stance judge of explanations whose verdict was forced."""

from __future__ import annotations

import numpy as np
import pytest

from clsgen.backbones import tiny_model
from clsgen.data import Example
from clsgen.stance import judged_rows, stance_metrics, stance_shift
from clsgen.task import Task

TASK = Task(name="toy", system="Decide.", template="Claim: {claim}", verbalizers=("FALSE", "TRUE"),
            verdict_position="first")


def test_stance_metrics_rank_and_sign_the_bodies_against_their_verdicts():
    perfect = stance_metrics([2.0, 1.0, -0.5, -3.0], [1, 1, 0, 0], n_bootstrap=50)
    assert perfect["body_stance_auroc"].value == 1.0 and perfect["body_stance_agreement"].value == 1.0
    ignored = stance_metrics([1.0, -1.0, 1.0, -1.0], [1, 1, 0, 0], n_bootstrap=50)
    assert ignored["body_stance_auroc"].value == 0.5 and ignored["body_stance_agreement"].value == 0.5
    one_verdict = stance_metrics([1.0, 2.0], [1, 1], n_bootstrap=10)["body_stance_auroc"]
    assert one_verdict.value is None and "class" in one_verdict.note


def test_judged_rows_keep_explained_rows_with_a_body_and_a_verdict():
    rows = [{"id": "a", "explained": True, "verdict": 1, "text": "Answer: TRUE\n\nThe trial met its endpoint."},
            {"id": "b", "explained": True, "verdict": None, "text": "Answer: maybe\n\nUnclear."},
            {"id": "c", "explained": True, "verdict": 0, "text": "Answer: FALSE"},
            {"id": "d", "explained": False}]
    assert judged_rows(rows, TASK) == [("a", "The trial met its endpoint.", 1)]


def test_the_stance_is_the_bodys_shift_of_the_judges_log_odds():
    judge = tiny_model(seed=3)
    exs = [Example("a", {"claim": "drug A lowers pressure"}, 1), Example("b", {"claim": "drug B is safe"}, 0)]
    shift = stance_shift(judge.model, judge.tokenizer, TASK, exs, ["It clearly does.", "It does not."])
    assert shift.shape == (2,) and np.isfinite(shift).all() and np.abs(shift).max() > 0
    same = stance_shift(judge.model, judge.tokenizer, TASK, exs[:1], ["It clearly does."], batch_size=1)
    assert same[0] == pytest.approx(shift[0], abs=1e-4)  # batching changes nothing


def test_an_experiment_judges_the_head_conditioned_row_and_its_source_once(tmp_path):
    import json

    from clsgen.config import load_config
    from clsgen.datasets import DatasetSplits
    from clsgen.experiment import _judge_stances, results_table

    test = [Example(f"t{i}", {"claim": f"claim {i}"}, i % 2) for i in range(4)]
    ds = DatasetSplits(name="toy", task=TASK, train=[], validation=[], test=test, info={})
    cfg = load_config(None, ["model.name=tiny", "eval.n_bootstrap=20", "eval.batch_size=2"])
    bodies = ["The trial met its endpoint.", "No difference was found.", "It improved.", "It did not."]
    results = {}
    for method in ("clsgen+consistency", "clsgen+head-verdict", "tfidf"):
        folder = tmp_path / "eval" / method
        folder.mkdir(parents=True)
        rows = [{"id": ex.id, "explained": method != "tfidf", "verdict": ex.label,
                 "text": f"Answer: {TASK.verbalizers[ex.label]}\n\n{body}"} for ex, body in zip(test, bodies)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        results[method] = {"metrics": {"auroc": {"value": 0.5}}}
    logs: list[str] = []
    _judge_stances(cfg, ds, results, tmp_path, logs.append)
    for method in ("clsgen+consistency", "clsgen+head-verdict"):
        assert results[method]["metrics"]["body_stance_auroc"]["n"] == 4
        stored = json.loads((tmp_path / "eval" / method / "stance.json").read_text())
        assert stored["judge"] == "tiny" and len(stored["rows"]) == 4
    assert "body_stance_auroc" not in results["tfidf"]["metrics"]
    assert "body_stance_auroc" in results_table(results, cfg, ds)
    again = {m: {"metrics": {}} for m in results}
    _judge_stances(cfg, ds, again, tmp_path, logs.append)  # read back, not judged again
    assert sum("judging" in line for line in logs) == 2
    assert again["clsgen+head-verdict"]["metrics"] == {k: v for k, v in results["clsgen+head-verdict"]["metrics"].items()
                                                       if k.startswith("body")}
