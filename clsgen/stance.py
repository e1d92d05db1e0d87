"""Does an explanation's body argue for the verdict it states? A judge model reads it and says.

Head-conditioned decoding forces the verdict line to the head's label, so its stated verdict agrees
with the probability by construction and alignment measures nothing. What can still disagree is the
body written after the forced verdict: an explanation labelled FALSE that argues TRUE. The judge (the
base model, no adapter) scores the two verbalizers after the task prompt with the body as the
assistant's text ("<body>\\n\\nAnswer: "), and once with no body; the difference of the two
log-odds is the body's stance (positive: the body pushes the judge toward label 1), free of the
judge's own prior for one verbalizer. Reported per method:

- body_stance_auroc: AUROC of the stance against the stated verdicts (0.5: the bodies do not follow
  the verdict; 1: every body argues its own verdict more than any body of the other verdict);
- body_stance_agreement: share of explained rows whose stance has the sign of the stated verdict.

A 135M judge is weak; compare methods judged by the same judge, never the value with another judge's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .data import Example
from .metrics import MetricResult, _result, auroc
from .task import Task

STANCE_FILE = "stance.json"
"""Where the experiment keeps each judged method's stance figures, next to its metrics.json."""


def stance_shift(model: Any, tokenizer: Any, task: Task, examples: Sequence[Example], bodies: Sequence[str],
                 batch_size: int = 8) -> np.ndarray:
    """Per example: the judge's log-odds of label 1 with the body minus without it."""
    from .baselines.prompting import explanation_prefix, verbalizer_log_probs

    by_row = {id(ex): body for ex, body in zip(examples, bodies)}
    with_body = verbalizer_log_probs(model, tokenizer, task, examples,
                                     lambda ex: explanation_prefix(by_row[id(ex)]), batch_size)
    without = verbalizer_log_probs(model, tokenizer, task, examples, None, batch_size)
    return (with_body[:, 1] - with_body[:, 0]) - (without[:, 1] - without[:, 0])


def stance_metrics(shift: Sequence[float], verdicts: Sequence[int], n_bootstrap: int = 1000,
                   seed: int = 0) -> dict[str, MetricResult]:
    """body_stance_auroc and body_stance_agreement of the stances against the stated verdicts."""
    shift, stated = np.asarray(shift, dtype=np.float64), np.asarray(verdicts, dtype=np.int64)
    agree = lambda s, v: float(np.mean((s > 0) == (v == 1)))  # noqa: E731
    return {"body_stance_auroc": _result(lambda v, s: auroc(v, s), [stated, shift], n_bootstrap, seed, 0.05),
            "body_stance_agreement": _result(agree, [shift, stated], n_bootstrap, seed, 0.05)}


def judged_rows(predictions: Sequence[dict[str, Any]], task: Task) -> list[tuple[str, str, int]]:
    """(id, body, stated verdict) of each explained prediction row with a body and a verdict."""
    out = []
    for row in predictions:
        if not row.get("explained") or row.get("verdict") not in (0, 1):
            continue
        body = task.split_verdict(row.get("text") or row.get("explanation") or "")[0].strip()
        if body:
            out.append((str(row["id"]), body, int(row["verdict"])))
    return out


__all__ = ["STANCE_FILE", "judged_rows", "stance_metrics", "stance_shift"]
