"""The results page of an experiment: one self-contained HTML file a reader understands without the docs.

Contents, top to bottom: what was run (dataset, split, rows, model, time, command); the comparison
table with human metric names, 95% intervals, row counts, the best value per column marked and the
paper's figures as a reference row; a chart of AUROC, alignment AUROC, alignment κ and readability per
method with their intervals and the paper's figures as bands; the same test rows explained by every
generating method side by side; and a one-line definition of every metric.

The page has inline CSS and inline SVG only: no scripts, no external assets. Privacy, as in
`clsgen.report`: by default it holds no text of the data and no generated text (an explanation can
quote its often clinical input) and no row ids; the side-by-side rows then show probabilities,
verdicts and explanation lengths. `show_examples=True` (CLI --show-examples) adds the ids and the
explanation texts, escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MetricSpec:
    """How the page names, defines and ranks one metric of `clsgen.metrics.compute_metrics`."""

    key: str
    """The key in metrics.json / results.json (shown only as a tooltip)."""
    name: str
    """The name a reader sees."""
    definition: str
    """One line, after DESIGN.md's metric table."""
    better: str | None = "higher"
    """'higher', 'lower' or None (not ranked)."""
    paper: str | None = None
    """The paper's figure for it (CLSGen, Llama-3.1-8B-Instruct on a GPU), as text."""
    band: tuple[float, float] | None = None
    """The paper's figure as an interval, drawn on the chart."""


METRICS = (
    MetricSpec("auroc", "AUROC", "Area under the ROC curve of the head's probability p against the gold label: "
               "the chance that a random positive row scores above a random negative one (0.5 = chance).",
               paper="above prompting; ≥ CNN"),
    MetricSpec("auprc", "AUPRC", "Area under the precision–recall curve (average precision) of p against the "
               "gold label; chance is the share of positive rows."),
    MetricSpec("f1", "F1", "F1 score of the predicted label ŷ = [p ≥ τ] against the gold label, with the "
               "threshold τ chosen on the validation split (max F1)."),
    MetricSpec("accuracy", "Accuracy",
               "Share of test rows whose predicted label ŷ = [p ≥ τ] equals the gold label."),
    MetricSpec("ece", "Calibration error (ECE)", "Expected calibration error: the mean gap between the stated "
               "probability and the observed share of positives, over 15 equal-width bins. Lower is better.",
               better="lower"),
    MetricSpec("brier", "Brier score", "Mean squared error of p against the gold label (0 or 1). Lower is better.",
               better="lower"),
    MetricSpec("alignment_auroc", "Alignment AUROC", "AUROC of p against the label that the generated "
               "explanation states in its verdict line (rows with a verdict): does the explanation agree "
               "with the probability?", paper="0.95–0.98", band=(0.95, 0.98)),
    MetricSpec("alignment_kappa", "Alignment κ", "Cohen's κ between the predicted label ŷ and the explanation's "
               "verdict: agreement beyond chance (1 = always agree, 0 = chance).",
               paper="0.61–0.70", band=(0.61, 0.70)),
    MetricSpec("inconsistency_rate", "Inconsistency rate", "Share of explained rows whose explanation states "
               "no verdict, or a verdict other than the predicted label ŷ. Lower is better.", better="lower",
               paper="< 0.05 (RLI, our reading)"),
    MetricSpec("body_stance_auroc", "Body stance AUROC", "Does the text after the verdict argue for it? AUROC "
               "of the base model's stance from the explanation (log-odds of label 1 with the explanation's body "
               "minus without it) against the stated verdict; 0.5 = the bodies ignore their verdict. Weak judge: "
               "compare rows, not other runs."),
    MetricSpec("first_draw_inconsistency", "Inconsistency, first draw", "Rejection sampling: the inconsistency "
               "rate of each row's first explanation (the model's own, before any redraw); the inconsistency "
               "column gives the kept ones'. Lower is better.", better="lower"),
    MetricSpec("draws", "Draws", "Rejection sampling: explanations decoded per row on average (1 = none "
               "redrawn).", better=None),
    MetricSpec("readability", "Readability", "Share of explanations that are non-empty, state a verdict, do "
               "not loop and read as prose. Near 0 means the model no longer writes explanations.",
               paper="> 0.98", band=(0.98, 1.0)),
    MetricSpec("flesch", "Flesch reading ease", "Mean Flesch reading ease of the explanations (higher reads "
               "easier; clinical prose scores 0–30). Not ranked: easier is not better here.", better=None),
)
SPECS = {m.key: m for m in METRICS}
CHART_METRICS = (("auroc", (0.0, 1.0)), ("alignment_auroc", (0.0, 1.0)), ("alignment_kappa", (-0.5, 1.0)),
                 ("readability", (0.0, 1.0)))
"""The charted metrics and their axis ranges."""
PAPER_SOURCE = "paper (CLSGen, arXiv 2604.11801): Llama-3.1-8B-Instruct on a GPU"
METHOD_NAMES = {
    "clsgen": ("CLSGen", "LoRA + classification head, trained jointly with the explanation (the method)"),
    "clsgen+consistency": ("CLSGen + consistency", "CLSGen with a loss tying the explanation's verdict to the head"),
    "clsgen+head-verdict": ("CLSGen, head-conditioned", "CLSGen + consistency's model with the verdict line "
                            "forced to the head's label, the explanation written after it"),
    "clsgen+rejection": ("CLSGen, rejection sampling", "CLSGen + consistency's model; an explanation whose "
                         "verdict disagrees with the head is sampled again (a few draws at most)"),
    "classification-only": ("Classification only", "the same model with the explanation loss off (w_lm = 0)"),
    "generation-only": ("Generation only", "LoRA fine-tuned on explanations; p from the verdict token"),
    "prompting": ("Prompting (zero-shot)", "the base model untrained; p from the verdict words' next-token "
                  "probabilities"),
    "cnn": ("CNN", "convolutional network over word embeddings (filter widths 1, 2, 3)"),
    "tfidf": ("TF-IDF + LR", "TF-IDF word features + logistic regression"),
}
GENERATING = ("clsgen", "clsgen+consistency", "clsgen+head-verdict", "clsgen+rejection", "classification-only",
              "generation-only", "prompting")
TEXT_CHARS = 700
"""Longer explanations are cut (with an ellipsis) in the side-by-side rows."""

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1240px;
color:#222;padding:0 1em;line-height:1.4}h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.86em}td,th{padding:.3em .45em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}th[title]{cursor:help;text-decoration:underline dotted}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci,.n{display:block;font-size:.8em;color:#666}.best{font-weight:700;background:#e8f4ec}
.mark{color:#16794c}.undef{color:#999;cursor:help}tr.paper td{background:#fff8ec;color:#7a4a00;font-style:italic}
.desc{display:block;font-size:.8em;color:#666;min-width:11em;max-width:14em}
tr.paper td.num{white-space:normal}.note{color:#666;font-size:.88em}
dl.run{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1em;font-size:.92em}dt{color:#555}dd{margin:0}
dl.defs{columns:2;column-gap:2em;font-size:.92em}dl.defs dt{font-weight:600;color:#222;margin-top:.4em;
break-after:avoid}dl.defs dd{margin:0 0 0 1em;break-before:avoid;break-inside:avoid}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:.5em 1.5em}svg text{font-size:11px;fill:#333}
table.sbs{table-layout:fixed;width:100%}table.sbs td{font-size:.88em}
.cell{border-left:4px solid #ccc;padding-left:.5em}.cell.ok{border-color:#2e9d5b}
.cell.bad{border-color:#c62828;background:#fdecea}.cell.na{border-color:#bbb;color:#777}
.flag{display:inline-block;font-size:.8em;font-weight:700;padding:0 .4em;border-radius:3px;margin:.15em 0}
.flag.ok{background:#e3f4e8;color:#1b6b3c}.flag.bad{background:#c62828;color:#fff}
.expl{white-space:pre-wrap;margin-top:.3em;max-height:16em;overflow:hidden}
.right{color:#16794c}.wrong{color:#c62828;font-weight:700}.badge{display:block;font-weight:400;font-size:.8em}.badge.bad{color:#c62828;font-weight:700}
"""


# ---------------------------------------------------------------------------------- values


def _metric(result: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return ((result.get("metrics") or {}).get(key)) or {}


def _num(v: float, key: str) -> str:
    return f"{v:.1f}" if key == "flesch" else f"{v:.3f}"


def best_methods(results: Mapping[str, Mapping[str, Any]], key: str) -> set[str]:
    """The methods holding the best value of metric `key` (ties at the shown precision share the mark);
    none when the metric is not ranked or fewer than two methods have a value."""
    spec = SPECS.get(key)
    if spec is None or spec.better is None:
        return set()
    values = {m: round(v, 1 if key == "flesch" else 3) for m, r in results.items()
              if isinstance(v := _metric(r, key).get("value"), (int, float))}
    if len(values) < 2:
        return set()
    best = max(values.values()) if spec.better == "higher" else min(values.values())
    return {m for m, v in values.items() if v == best}


def method_name(method: str) -> str:
    """The name a reader sees for a method key of the experiment."""
    return METHOD_NAMES.get(method, (method, ""))[0]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60} min" if h else f"{rest // 60} min {rest % 60} s"


def method_seconds(result: Mapping[str, Any]) -> float | None:
    """Fit (training) plus evaluation time recorded for one method, None when nothing was recorded."""
    parts = [((result.get("info") or {}).get("fit_seconds"))] + list((result.get("timing_s") or {}).values())
    parts = [float(p) for p in parts if isinstance(p, (int, float))]
    return sum(parts) if parts else None


# ---------------------------------------------------------------------------------- header and table


def _header(run: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> str:
    esc = html.escape
    split = ", ".join(str(run[k]) for k in ("split", "binarization") if run.get(k))
    counts = [f"{run[k]} {w}" for k, w in (("n_train", "training"), ("n_validation", "validation"))
              if run.get(k) is not None]
    times = [t for t in (method_seconds(r) for r in results.values()) if t is not None]
    facts = [("dataset", run.get("dataset")), ("split", split or None),
             ("test rows", run.get("n_test")), ("other rows", ", ".join(counts) or None),
             ("model", run.get("model")), ("teacher", run.get("teacher")),
             ("time", f"{_duration(sum(times))} (training + evaluation of {len(times)} methods, as recorded)"
              if times else None)]
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in facts if v not in (None, ""))
    if run.get("command"):
        items += f"<dt>command</dt><dd><code>{esc(str(run['command']))}</code></dd>"
    return f"<dl class=run>{items}</dl>" if items else "<p class=note>No run details were recorded.</p>"


def _cell(result: Mapping[str, Any], key: str, best: bool) -> str:
    m = _metric(result, key)
    value = m.get("value")
    if not isinstance(value, (int, float)):
        why = m.get("note") or ("fixed by the method's design, not a measurement"
                                if key in (result.get("by_construction") or ()) else
                                "not computed for this method" if m == {} else "undefined")
        return f"<td class=num><span class=undef title='{html.escape(str(why), quote=True)}'>—</span></td>"
    text = _num(value, key)
    inner = f"{text} <span class=mark title='best in this column'>★</span>" if best else text
    if isinstance(m.get("low"), (int, float)) and isinstance(m.get("high"), (int, float)):
        inner += f"<span class=ci>[{_num(m['low'], key)}, {_num(m['high'], key)}]</span>"
    elif m.get("note"):
        inner += f"<span class=ci title='{html.escape(str(m['note']), quote=True)}'>no interval</span>"
    inner += f"<span class=n>n={int(m.get('n') or 0)}</span>"
    return f"<td class='num{' best' if best else ''}'>{inner}</td>"


def _table(results: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> str:
    esc = html.escape
    head = "<tr><th>method</th>" + "".join(
        f"<th title='{esc(SPECS[k].definition, quote=True)} (key: {esc(k)})'>{esc(SPECS[k].name)}</th>"
        for k in keys) + "</tr>"
    best = {k: best_methods(results, k) for k in keys}
    rows = [head]
    for method, r in results.items():
        desc = METHOD_NAMES.get(method, ("", ""))[1]
        cells = "".join(_cell(r, k, method in best[k]) for k in keys)
        link = (f"<a href='eval/{esc(method, quote=True)}/report.html'>full report</a>" if not r.get("reused_from")
                else f"metrics from {esc(Path(r['reused_from']).name)}")
        rows.append(f"<tr><td title='key: {esc(method, quote=True)}'><b>{esc(method_name(method))}</b>"
                    f"<span class=desc>{esc(desc)}; {link}</span></td>{cells}</tr>")
    paper = "".join(f"<td class=num>{esc(SPECS[k].paper or '')}</td>" for k in keys)
    rows.append(f"<tr class=paper><td>{esc(PAPER_SOURCE)}</td>{paper}</tr>")
    return "<table class=results>" + "".join(rows) + "</table>"


def _definitions(keys: Sequence[str]) -> str:
    items = "".join(f"<dt>{html.escape(SPECS[k].name)}</dt><dd>{html.escape(SPECS[k].definition)}"
                    + (f" <i>Paper: {html.escape(SPECS[k].paper)}.</i>" if SPECS[k].paper else "") + "</dd>"
                    for k in keys)
    return f"<dl class=defs>{items}</dl>"


# ---------------------------------------------------------------------------------- chart


def _panel(results: Mapping[str, Mapping[str, Any]], key: str, domain: tuple[float, float]) -> str:
    """One horizontal dot-and-interval plot (inline SVG) of metric `key`, one line per method."""
    spec, (lo, hi) = SPECS[key], domain
    left, width, row_h, top = 150, 300, 24, 34
    height = top + row_h * len(results) + 28

    def x(v: float) -> float:
        return left + width * (min(max(v, lo), hi) - lo) / (hi - lo)

    parts = [f"<text x='0' y='14' style='font-size:13px;font-weight:600'>{html.escape(spec.name)}</text>"]
    if spec.band is not None:
        a, b = x(spec.band[0]), x(spec.band[1])
        parts.append(f"<rect x='{a:.1f}' y='{top - 6}' width='{max(b - a, 2):.1f}' height='{height - top - 16}' "
                     "fill='#f5a623' fill-opacity='0.3'><title>"
                     f"{html.escape(PAPER_SOURCE)}: {html.escape(spec.paper or '')}</title></rect>")
        parts.append(f"<text x='{b:.1f}' y='{top - 10}' text-anchor='end' style='fill:#a05a00'>"
                     f"paper {html.escape(spec.paper or '')}</text>")
    if key == "auroc":
        parts.append(f"<line x1='{x(0.5):.1f}' x2='{x(0.5):.1f}' y1='{top - 6}' y2='{height - 22}' "
                     "stroke='#999' stroke-dasharray='3,3'/>"
                     f"<text x='{x(0.5) + 3:.1f}' y='{top - 10}' style='fill:#777'>chance</text>")
    step = 0.25 if lo >= 0 else 0.5
    for t in (lo + step * i for i in range(int(round((hi - lo) / step)) + 1)):
        parts.append(f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{height - 22}' y2='{height - 18}' stroke='#666'/>"
                     f"<text x='{x(t):.1f}' y='{height - 6}' text-anchor='middle'>{t:g}</text>")
    parts.append(f"<line x1='{left}' x2='{left + width}' y1='{height - 22}' y2='{height - 22}' stroke='#666'/>")
    for i, (method, r) in enumerate(results.items()):
        y = top + row_h * i + row_h / 2
        m = _metric(r, key)
        parts.append(f"<text x='{left - 8}' y='{y + 4:.1f}' text-anchor='end'>"
                     f"{html.escape(method_name(method))}</text>")
        value = m.get("value")
        if not isinstance(value, (int, float)):
            why = html.escape(str(m.get("note") or "not computed"))
            parts.append(f"<text x='{left + 4}' y='{y + 4:.1f}' style='fill:#999'>— <title>{why}</title></text>")
            continue
        if isinstance(m.get("low"), (int, float)) and isinstance(m.get("high"), (int, float)):
            a, b = x(m["low"]), x(m["high"])
            parts.append(f"<line x1='{a:.1f}' x2='{b:.1f}' y1='{y:.1f}' y2='{y:.1f}' stroke='#1f5fa8' "
                         f"stroke-width='2'/><line x1='{a:.1f}' x2='{a:.1f}' y1='{y - 5:.1f}' y2='{y + 5:.1f}' "
                         f"stroke='#1f5fa8'/><line x1='{b:.1f}' x2='{b:.1f}' y1='{y - 5:.1f}' y2='{y + 5:.1f}' "
                         "stroke='#1f5fa8'/>")
        parts.append(f"<circle cx='{x(value):.1f}' cy='{y:.1f}' r='4.5' fill='#1f5fa8'><title>"
                     f"{html.escape(method_name(method))}: {_num(value, key)}</title></circle>"
                     f"<text x='{left + width + 6}' y='{y + 4:.1f}'>{_num(value, key)}</text>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' role='img' aria-label='{html.escape(spec.name)}' "
            f"width='{left + width + 50}' height='{height}' viewBox='0 0 {left + width + 50} {height}'>"
            + "".join(parts) + "</svg>")


def _chart(results: Mapping[str, Mapping[str, Any]]) -> str:
    panels = "".join(f"<figure>{_panel(results, k, d)}</figure>" for k, d in CHART_METRICS)
    return (f"<div class=charts>{panels}</div><p class=note>Dot: the value on the test rows; bar: its bootstrap "
            f"95% interval; —: undefined for that method (hover for why). Orange bands: the figures of the "
            f"{html.escape(PAPER_SOURCE)}; they are a reference, not measured here.</p>")


# ---------------------------------------------------------------------------------- side by side


def read_predictions(path: Path) -> dict[str, dict[str, Any]] | None:
    """The rows of a predictions.jsonl by id (file order), None when the file is missing or unreadable;
    lines that are not JSON objects with an id are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    rows: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("id") is not None:
            rows[str(row["id"])] = row
    return rows


def pick_rows(predictions: Mapping[str, Mapping[str, Mapping[str, Any]] | None], k: int = 3) -> list[str]:
    """Up to `k` test-row ids explained by every method that explained any row (both gold labels when
    possible, in file order); rows explained by some method when no row is common to all."""
    explained = [[i for i, r in rows.items() if r.get("explained")] for rows in predictions.values() if rows]
    explained = [ids for ids in explained if ids]
    if not explained:
        return []
    common = set.intersection(*(set(ids) for ids in explained))
    pool = [i for i in explained[0] if i in common] if common else list(dict.fromkeys(sum(explained, [])))
    label = {i: r.get("label") for rows in predictions.values() if rows for i, r in rows.items()}
    by_label = [[i for i in pool if label.get(i) == lab] for lab in (1, 0)]
    rest = [i for i in pool if label.get(i) not in (0, 1)]
    interleaved = [i for pair in zip(*by_label) for i in pair]
    n_pairs = len(interleaved) // 2
    ordered = interleaved + by_label[0][n_pairs:] + by_label[1][n_pairs:] + rest
    return ordered[:k]


def _word(v: Any, verbalizers: Sequence[str] | None) -> str:
    if isinstance(v, int) and verbalizers and 0 <= v < len(verbalizers):
        return str(verbalizers[v])
    return str(v)


def _row_cell(rows: Mapping[str, Mapping[str, Any]] | None, row_id: str, verbalizers: Sequence[str] | None,
              show_text: bool) -> str:
    """One method's answer for one test row: p, its label, the explanation's verdict, a flag, the text."""
    esc = html.escape
    if rows is None:
        return "<div class='cell na'>not available: no predictions were recorded for this method</div>"
    row = rows.get(row_id)
    if row is None:
        return "<div class='cell na'>not available: this row is not in the method's predictions</div>"
    p, pred = row.get("probability"), row.get("prediction")
    head = (f"p = {p:.3f} → <b>{esc(_word(pred, verbalizers))}</b>" if isinstance(p, (int, float))
            else f"label <b>{esc(_word(pred, verbalizers))}</b>")
    if isinstance(row.get("correct"), bool):
        head += " <span class=right>(right)</span>" if row["correct"] else " <span class=wrong>(wrong)</span>"
    if not row.get("explained"):
        return f"<div class='cell na'>{head}<br>not explained (only a sample of the test rows is explained)</div>"
    verdict, text = row.get("verdict"), str(row.get("explanation") or "")
    if verdict is None:
        status, flag = "bad", "<span class='flag bad'>⚠ no verdict stated</span>"
    elif verdict != pred:
        status, flag = "bad", (f"<span class='flag bad'>⚠ explanation says {esc(_word(verdict, verbalizers))}, "
                               f"label is {esc(_word(pred, verbalizers))}</span>")
    else:
        status, flag = "ok", f"<span class='flag ok'>✓ explanation says {esc(_word(verdict, verbalizers))}</span>"
    words = len(text.split())
    if not text.strip():
        body = "<div class=expl><i>(empty explanation)</i></div>"
    elif show_text:
        cut = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS].rstrip() + " …"
        body = f"<div class=expl>{esc(cut)}</div>"
    else:
        body = f"<div class='expl note'>{words} words (text hidden)</div>"
    return f"<div class='cell {status}'>{head}<br>{flag}{body}</div>"


FAILURES = (("missing_verdict", "state no verdict"), ("degenerate", "loop or repeat (collapse)"),
            ("not_prose", "are not prose"), ("empty", "are empty"))
"""Readability flags (`clsgen.readability.explanation_quality`) and how the badge names them."""


def _method_badge(result: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]] | None) -> str:
    """The method's readability, and when it is low, what its explanations fail at most (from its rows)."""
    m = _metric(result, "readability")
    v = m.get("value")
    if not isinstance(v, (int, float)):
        return "<span class=badge>readability —</span>"
    if v >= 0.5:
        return f"<span class=badge>readability {v:.2f}</span>"
    from .readability import explanation_quality

    explained = [r for r in (rows or {}).values() if r.get("explained")]
    counts = {flag: 0 for flag, _ in FAILURES}
    for r in explained:
        flags = explanation_quality(r.get("text"), r.get("verdict"))
        for flag, _ in FAILURES:
            counts[flag] += flags[flag]
    flag, what = max(FAILURES, key=lambda f: counts[f[0]])
    why = f"{counts[flag]} of {len(explained)} {what}" if explained and counts[flag] else "explanations unreadable"
    return f"<span class='badge bad'>readability {v:.2f}: {html.escape(why)}</span>"


def _side_by_side(results: Mapping[str, Mapping[str, Any]], eval_dirs: Mapping[str, Path | None],
                  verbalizers: Sequence[str] | None, show_examples: bool, n_rows: int) -> str:
    esc = html.escape
    methods = [m for m, r in results.items() if m in GENERATING or (r.get("n_explained") or 0) > 0]
    if not methods:
        return "<p class=note>Not available: no method that writes explanations was run.</p>"
    predictions = {m: read_predictions(d / "predictions.jsonl") if d else None
                   for m, d in ((m, eval_dirs.get(m)) for m in methods)}
    ids = pick_rows(predictions, n_rows)
    if not ids:
        return "<p class=note>Not available: no method's predictions hold an explanation.</p>"
    head = "<tr><th style='width:9em'>test row</th>" + "".join(
        f"<th>{esc(method_name(m))}{_method_badge(results[m], predictions[m])}</th>" for m in methods) + "</tr>"
    body = []
    for n, row_id in enumerate(ids, 1):
        gold = next((rows[row_id].get("label") for rows in predictions.values() if rows and row_id in rows), None)
        name = f"row {n}" + (f"<br><code>{esc(row_id)}</code>" if show_examples else "")
        cells = "".join(f"<td>{_row_cell(predictions[m], row_id, verbalizers, show_examples)}</td>" for m in methods)
        body.append(f"<tr><td>{name}<br>gold: <b>{esc(_word(gold, verbalizers))}</b></td>{cells}</tr>")
    note = ("Each column is one method answering the same test row: its probability p and label "
            "(p ≥ its threshold; right or wrong against the gold label), the verdict its explanation states, "
            "and the explanation. Red: the explanation states no verdict, or one that contradicts the method's "
            "own label.")
    if not show_examples:
        note += (" The texts and row ids are hidden, because generated text can quote its (often clinical) "
                 "input; rerun with --show-examples to include them (each method's predictions.jsonl holds "
                 "them all).")
    return f"<p class=note>{esc(note)}</p><table class=sbs>{head}{''.join(body)}</table>"


# ---------------------------------------------------------------------------------- page


def render_results_page(results: Mapping[str, Mapping[str, Any]], *, title: str,
                        run: Mapping[str, Any] | None = None, out_dir: str | Path | None = None,
                        show_examples: bool = False, n_rows: int = 3) -> str:
    """The results page (HTML) of an experiment.

    results: method -> its summary as in results.json (metrics with value/low/high/n/note, info,
        timing_s, n_explained, report).
    run: what was run: dataset, split, binarization, n_test, n_train, n_validation, model, teacher,
        verbalizers, command (each optional).
    out_dir: the experiment folder; each method's predictions are read from eval/<method>/ there (else
        from beside the method's `report`). Missing pieces render as "not available", never an error.
    show_examples: put the explanation texts and row ids of the side-by-side rows in the page.
    """
    run = dict(run or {})
    esc = html.escape
    eval_dirs: dict[str, Path | None] = {}
    for method, r in results.items():
        if out_dir is not None:
            eval_dirs[method] = Path(out_dir) / "eval" / method
        else:
            eval_dirs[method] = Path(r["report"]).parent if r.get("report") else None
    present = {k for r in results.values() for k in (r.get("metrics") or {})}
    keys = [m.key for m in METRICS if m.key in present] or [m.key for m in METRICS]
    verbalizers = run.get("verbalizers")
    if results:
        table = _table(results, keys)
        chart = _chart(results)
    else:
        table = chart = "<p class=note>Not available: no method has finished.</p>"
    sections = [
        f"<h1>{esc(title)}</h1>", _header(run, results),
        "<h2>Comparison on the test rows</h2>", table,
        "<p class=note>Each cell: the value, its bootstrap 95% interval [low, high] and the number of rows it "
        "used (n). ★ and green: the best value in the column (lower is better for calibration error, Brier "
        "score and inconsistency rate). —: undefined for that method (hover for why). Hover a column name "
        "for its definition; all definitions are below.</p>",
        "<h2>What the numbers mean</h2>", _definitions(keys),
        "<h2>Ranking (AUROC) and agreement of the explanation with the probability</h2>", chart,
        "<h2>The same test rows, explained by each method</h2>",
        _side_by_side(results, eval_dirs, verbalizers, show_examples, n_rows) if results else "",
    ]
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")
