"""A self-contained HTML evaluation report: plots as inline PNG (matplotlib Agg), no scripts, no
external assets, so it opens anywhere and can be archived or mailed as one file.

Contents: the metric table with bootstrap intervals and row counts, ROC and PR curves, a
reliability diagram, the probability histogram split by the explanation's verdict and, when asked
for, a sample of explanations (the most confident right and wrong predictions).

Privacy: a report is made to be shared, and the data is often clinical. By default it holds no text
of the data and no generated text (an explanation can quote its input): only metrics, plots and
counts. `show_examples=True` (CLI --show-examples) adds the sample explanations with their ids;
`show_inputs=True` (CLI --show-inputs) adds the input texts to those samples (and implies
`show_examples`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import __version__
from .files import atomic_write_text
from .metrics import ECE_BINS, MetricResult

METRIC_LABELS = {
    "auroc": ("AUROC", "of p against the gold label"),
    "auprc": ("AUPRC", "average precision"),
    "f1": ("F1", "of p >= threshold"),
    "accuracy": ("Accuracy", "of p >= threshold"),
    "ece": ("ECE", f"{ECE_BINS} equal-width bins (lower is better)"),
    "brier": ("Brier", "mean squared error of p (lower is better)"),
    "alignment_auroc": ("Alignment AUROC", "of p against the explanation's verdict"),
    "alignment_kappa": ("Alignment κ", "Cohen's κ of p >= threshold vs the verdict"),
    "inconsistency_rate": ("Inconsistency", "verdict missing or != prediction (lower is better)"),
    "readability": ("Readability", "non-empty, verdict present, no loops, prose"),
    "flesch": ("Flesch", "reading ease of explanations"),
}
COLORS = {"calibrated": "#1f77b4", "uncalibrated": "#ff7f0e"}
STYLES = {"uncalibrated": "--"}  # dashed, so an identical calibrated curve (ROC, PR) stays visible

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#222;padding:0 1em}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.92em}td,th{padding:.3em .7em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}figure{margin:0}figure img{width:100%;height:auto;
border:1px solid #eee}figcaption{font-size:.85em;color:#555}.note{color:#666;font-size:.88em}
.expl{white-space:pre-wrap;font-size:.9em;max-width:60em}.right{color:#16794c}.wrong{color:#b3261e}
dl.info{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1em;font-size:.92em}dt{color:#555}dd{margin:0}
details{margin:.3em 0}summary{cursor:pointer;color:#555}
"""


# ---------------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_class() -> Any:
    """matplotlib's Figure (no pyplot: no global state, Agg canvas); the `report` extra installs it."""
    from .extras import require

    return require("matplotlib.figure", "the report's plots").Figure


def _figure() -> tuple[Any, Any]:
    Figure = _figure_class()
    fig = Figure(figsize=(5.2, 4.2))
    return fig, fig.subplots()


def _undefined(ax: Any, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#888")


def _curves(y: np.ndarray, series: Mapping[str, np.ndarray], kind: str) -> str:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig, ax = _figure()
    both = len(np.unique(y)) == 2
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls=":", color="#999", lw=1)
        ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
        if both:
            for name, p in series.items():
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, color=COLORS.get(name), ls=STYLES.get(name, "-"), lw=2,
                        label=f"{name} (AUROC {roc_auc_score(y, p):.3f})")
        else:
            _undefined(ax, "undefined: only one class present")
    else:
        ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve")
        if y.sum() > 0:
            ax.axhline(y.mean(), ls=":", color="#999", lw=1, label=f"prevalence {y.mean():.2f}")
            for name, p in series.items():
                prec, rec, _ = precision_recall_curve(y, p)
                ax.step(rec, prec, where="post", color=COLORS.get(name), ls=STYLES.get(name, "-"), lw=2,
                        label=f"{name} (AP {average_precision_score(y, p):.3f})")
        else:
            _undefined(ax, "undefined: no positive labels")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    return _png(fig)


def _reliability(y: np.ndarray, series: Mapping[str, np.ndarray], n_bins: int = ECE_BINS) -> str:
    Figure = _figure_class()
    fig = Figure(figsize=(5.2, 4.2))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    ax.plot([0, 1], [0, 1], ls=":", color="#999", lw=1, label="perfect calibration")
    width = 1.0 / n_bins
    for k, (name, p) in enumerate(series.items()):
        bins = np.digitize(p, edges[1:-1])
        count = np.bincount(bins, minlength=n_bins)
        freq = np.bincount(bins, weights=y, minlength=n_bins) / np.maximum(count, 1)
        conf = np.bincount(bins, weights=p, minlength=n_bins) / np.maximum(count, 1)
        used = count > 0
        ax.plot(conf[used], freq[used], "o-", color=COLORS.get(name), lw=1.5, ms=4, label=name)
        offset = (k - (len(series) - 1) / 2) * width / len(series)
        ax_n.bar(centers + offset, count, width=width / len(series), color=COLORS.get(name), alpha=0.8)
    ax.set(ylabel="Observed frequency of label 1", title="Reliability diagram", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    ax_n.set(xlabel="Predicted probability (bin mean)", ylabel="rows")
    return _png(fig)


def _histogram(p: np.ndarray, groups: Mapping[str, np.ndarray], threshold: float) -> str:
    fig, ax = _figure()
    edges = np.linspace(0.0, 1.0, 21)
    palette = ["#b3261e", "#16794c", "#9e9e9e", "#d0d0d0"]  # verdict 0, verdict 1, none, not explained
    data = [(name, p[mask], color) for (name, mask), color in zip(groups.items(), palette) if mask.any()]
    if data:
        ax.hist([d for _, d, _ in data], bins=edges, stacked=True, color=[c for _, _, c in data],
                label=[f"{n} ({len(d)})" for n, d, _ in data])
    ax.axvline(threshold, color="#222", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="Probability of label 1", ylabel="rows", title="Probability by explanation verdict",
           xlim=(0, 1))
    ax.legend(fontsize=8, loc="upper center")
    return _png(fig)


# ---------------------------------------------------------------------------------- HTML


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _metric_table(metrics: Mapping[str, MetricResult],
                  uncalibrated: Mapping[str, MetricResult] | None) -> str:
    head = "<tr><th>metric</th><th>value</th><th>95% interval</th><th>n</th>"
    head += "<th>uncalibrated</th>" if uncalibrated else ""
    head += "<th>definition / note</th></tr>"
    rows = [head]
    for key, m in metrics.items():
        label, definition = METRIC_LABELS.get(key, (key, ""))
        interval = f"[{_fmt(m.low)}, {_fmt(m.high)}]" if m.low is not None else "–"
        note = html.escape(m.note) if m.note else html.escape(definition)
        row = (f"<tr><td>{html.escape(label)}</td><td class=num>{_fmt(m.value)}</td><td class=num>{interval}</td>"
               f"<td class=num>{m.n}</td>")
        if uncalibrated:
            u = uncalibrated.get(key)
            row += f"<td class=num>{_fmt(u.value if u else None)}</td>"
        rows.append(row + f"<td class=note>{note}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _samples(rows: Sequence[Mapping[str, Any]], verbalizers: Sequence[str] | None, show_inputs: bool,
             k: int, show_examples: bool = True) -> str:
    explained = [r for r in rows if r.get("explained")]
    if not explained:
        return "<p class=note>No explanations were generated (the classifier cannot explain, or --explain 0).</p>"
    if not (show_examples or show_inputs):
        return (f"<p class=note>{len(explained)} explanations were generated; none is shown here, because "
                "generated text can quote its input, which is often clinical. Pass --show-examples "
                "(Python: show_examples=True) to include the most confident right and wrong ones; "
                "predictions.jsonl holds every explanation.</p>")

    def confidence(r: Mapping[str, Any]) -> float:
        return r["probability"] if r["prediction"] == 1 else 1.0 - r["probability"]

    out = []
    for title, correct in (("Most confident right", True), ("Most confident wrong", False)):
        chosen = sorted((r for r in explained if r["correct"] == correct), key=confidence, reverse=True)[:k]
        out.append(f"<h3>{title} ({len(chosen)} of {sum(r['correct'] == correct for r in explained)})</h3>")
        if not chosen:
            out.append("<p class=note>none</p>")
            continue
        cells = ["<tr><th>id</th><th>gold</th><th>p</th><th>pred</th><th>verdict</th><th>explanation</th></tr>"]
        for r in chosen:
            verdict = r.get("verdict")
            word = "missing" if verdict is None else (verbalizers[verdict] if verbalizers else str(verdict))
            cls = "right" if correct else "wrong"
            body = html.escape(r.get("explanation") or "") or "<span class=note>(empty)</span>"
            inputs = ""
            if show_inputs and r.get("fields"):
                inputs = "".join(f"<details><summary>{html.escape(str(f))}</summary><div class=expl>"
                                 f"{html.escape(str(v))}</div></details>" for f, v in r["fields"].items())
            cells.append(f"<tr><td>{html.escape(str(r['id']))}</td><td class=num>{r['label']}</td>"
                         f"<td class=num>{r['probability']:.3f}</td><td class='num {cls}'>{r['prediction']}</td>"
                         f"<td>{html.escape(word)}</td><td>{inputs}<div class=expl>{body}</div></td></tr>")
        out.append("<table>" + "".join(cells) + "</table>")
    return "\n".join(out)


def render_report(*, y: Sequence[int], p: Sequence[float], threshold: float,
                  metrics: Mapping[str, MetricResult], rows: Sequence[Mapping[str, Any]],
                  p_uncalibrated: Sequence[float] | None = None,
                  metrics_uncalibrated: Mapping[str, MetricResult] | None = None,
                  verbalizers: Sequence[str] | None = None, info: Mapping[str, Any] | None = None,
                  title: str = "clsgen evaluation", show_inputs: bool = False, n_samples: int = 5,
                  show_examples: bool = False) -> str:
    """The report as one HTML string.

    `rows` are the evaluation's prediction rows (id, label, probability, prediction, correct,
    explained, verdict, explanation and, with `show_inputs`, fields). Sample explanations appear
    only with `show_examples` (or `show_inputs`, which adds the input texts to them).
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    series = {"calibrated": p} if p_uncalibrated is not None else {"model": p}
    if p_uncalibrated is not None:
        series["uncalibrated"] = np.asarray(p_uncalibrated, dtype=np.float64)
    explained = np.array([bool(r.get("explained")) for r in rows], dtype=bool)
    verdicts = [r.get("verdict") for r in rows]
    names = list(verbalizers) if verbalizers else ["0", "1"]
    groups = {
        f"verdict {names[0]}": explained & np.array([v == 0 for v in verdicts], dtype=bool),
        f"verdict {names[1]}": explained & np.array([v == 1 for v in verdicts], dtype=bool),
        "no verdict": explained & np.array([v is None for v in verdicts], dtype=bool),
        "not explained": ~explained,
    }
    plots = [
        ("ROC curve", _curves(y, series, "roc")),
        ("Precision-recall curve", _curves(y, series, "pr")),
        ("Reliability diagram (top) and rows per bin (bottom)", _reliability(y, series)),
        ("Probability histogram, stacked by the explanation's verdict", _histogram(p, groups, threshold)),
    ]
    info = dict(info or {})
    info.setdefault("rows", len(y))
    info.setdefault("explained rows", int(explained.sum()))
    info.setdefault("threshold", f"{threshold:.4g}")
    info.setdefault("generated", _dt.datetime.now().isoformat(timespec="seconds"))
    info.setdefault("clsgen", __version__)
    info_html = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
                        for k, v in info.items() if v is not None)
    figures = "".join(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{png}'>"
                      f"<figcaption>{html.escape(cap)}</figcaption></figure>" for cap, png in plots)
    if show_inputs:
        privacy = "Input texts are shown (--show-inputs). Confidence is the probability of the predicted label."
    elif show_examples:
        privacy = ("Input texts are not shown: only ids and the model's explanations (pass --show-inputs to "
                   "include them). Confidence is the probability of the predicted label.")
    else:
        privacy = "Neither input texts nor generated explanations are shown (privacy default)."
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<dl class=info>{info_html}</dl>
<h2>Metrics</h2>
<p class=note>95% percentile-bootstrap intervals; n is the number of rows each metric was computed on
(explanation metrics use only the explained rows, and alignment metrics only those with a verdict).</p>
{_metric_table(metrics, metrics_uncalibrated)}
<h2>Plots</h2>
<div class=grid>{figures}</div>
<h2>Explanations</h2>
<p class=note>{privacy}</p>
{_samples(rows, verbalizers, show_inputs, n_samples, show_examples)}
</body></html>
"""


def write_report(path: Any, **kwargs: Any) -> None:
    """Render the report (see `render_report`) and write it atomically to `path`."""
    atomic_write_text(path, render_report(**kwargs))
