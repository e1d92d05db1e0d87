"""Tests for clsgen.results_page: the experiment's results.html rendered from fake metrics and tiny
predictions files (no model is trained), and (when Chromium is installed) rendered in headless Chromium.

`fake_run(folder)` writes a realistic run (CliniFact-like figures, every method); `example_page` renders
it as a browser shows it (docs/results-page-screenshot.png is a real run's page; docs/evaluation.md).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from clsgen.results_page import PAPER_SOURCE, best_methods, pick_rows, render_results_page

HOSTILE = "<script>alert('x')</script> The abstract reports & claims"
VERBALIZERS = ["FALSE", "TRUE"]


def _m(value: float | None, half: float = 0.04, n: int = 394, note: str | None = None) -> dict[str, Any]:
    if value is None:
        return {"value": None, "low": None, "high": None, "n": n, "note": note or "undefined: no rows"}
    low, high = (value - half, value + half) if value > 1 else (max(value - half, 0.0), min(value + half, 1.0))
    return {"value": value, "low": low, "high": high, "n": n, "note": note}


def _metrics(auroc: float, ece: float, brier: float, align: float | None = None, kappa: float | None = None,
             incons: float | None = None, read: float | None = None, flesch: float | None = None,
             no_expl: str = "undefined: no explanations given") -> dict[str, Any]:
    out = {"auroc": _m(auroc), "auprc": _m(auroc - 0.2), "f1": _m(auroc - 0.15), "accuracy": _m(auroc - 0.05),
           "ece": _m(ece, 0.02), "brier": _m(brier, 0.01)}
    explained = read is not None
    out["alignment_auroc"] = _m(align, n=120) if align is not None else _m(
        None, n=120 if explained else 0, note="undefined: only one class present" if explained else no_expl)
    out["alignment_kappa"] = _m(kappa, 0.06, n=120) if kappa is not None else _m(
        None, n=0, note="undefined: only one class present" if explained else no_expl)
    out["inconsistency_rate"] = _m(incons, 0.03, n=120) if incons is not None else _m(None, n=0, note=no_expl)
    out["readability"] = _m(read, 0.03, n=120) if explained else _m(None, n=0, note=no_expl)
    out["flesch"] = _m(flesch, 2.5, n=120) if flesch is not None else _m(None, n=0, note=no_expl)
    return out


METHOD_METRICS = {
    "clsgen": _metrics(0.812, 0.041, 0.151, 0.962, 0.64, 0.031, 0.97, 24.3),
    "classification-only": _metrics(0.818, 0.052, 0.149, None, None, 0.992, 0.02, 61.0),
    "generation-only": _metrics(0.701, 0.210, 0.231, 0.990, 0.88, 0.012, 0.95, 21.7),
    "prompting": _metrics(0.561, 0.180, 0.262, 0.612, 0.11, 0.420, 0.55, 30.2),
    "cnn": _metrics(0.742, 0.061, 0.178),
    "tfidf": _metrics(0.832, 0.048, 0.146),
}
TEXTS = {
    "clsgen": ("The abstract reports a significant reduction in HbA1c with the drug versus placebo "
               "(p < 0.001), which is the outcome named in the claim.", "The trial was stopped early and "
               "reports no comparison for the claimed outcome, so the abstract is not evidence for it."),
    "generation-only": ("The primary endpoint improved with treatment and the difference was significant.",
                        "No result for this outcome is given; the abstract describes the design only."),
    "prompting": ("The claim is about a drug. The abstract is about a trial. The trial", ""),
    "classification-only": ("TRUE TRUE TRUE TRUE TRUE TRUE TRUE TRUE", ""),
}


def _rows(method: str, n: int = 12, hostile: bool = True) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        label = 1 if i % 3 == 0 else 0
        p = (0.86 if label else 0.18) if method != "prompting" else 0.52 + 0.01 * (i % 3)
        if method == "generation-only" and i == 1:
            p = 0.71  # a confident wrong label, explained the other way
        pred = int(p >= 0.5)
        row: dict[str, Any] = {"id": f"clinifact-{100 + i}", "label": label, "probability": p, "prediction": pred,
                               "correct": pred == label, "explained": i < 6}
        if i < 6 and method in TEXTS:
            text = TEXTS[method][0 if label else 1]
            verdict: int | None = pred
            if method == "classification-only":
                verdict = None
            elif method == "prompting" and not label:
                verdict = None
            elif method == "generation-only" and i == 1:
                verdict = 0
            if method == "clsgen" and i == 3:
                text = HOSTILE if hostile else ("In 412 adults the claimed outcome differed between the arms by "
                                                "1.2 points (95% CI 0.8 to 1.6), as the claim states.")
            row.update(verdict=verdict, explanation=text,
                       text=text + ("" if verdict is None else f"\n\nAnswer: {VERBALIZERS[verdict]}"))
        rows.append(row)
    return rows


def fake_run(folder: Path, methods: tuple[str, ...] = tuple(METHOD_METRICS),
             hostile: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write eval/<method>/predictions.jsonl for each method (one explanation holds markup unless
    `hostile` is False); return (results, run) as results.json holds them."""
    results = {}
    for method in methods:
        eval_dir = folder / "eval" / method
        eval_dir.mkdir(parents=True, exist_ok=True)
        rows = _rows(method, hostile=hostile)
        (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        results[method] = {"metrics": copy.deepcopy(METHOD_METRICS[method]),
                           "info": {"method": method, "fit_seconds": 1500.0},
                           "timing_s": {"predict_proba": 40.0, "explain": 600.0 if method in TEXTS else 0.0},
                           "n_explained": 6 if method in TEXTS else 0, "report": str(eval_dir / "report.html")}
    run = {"dataset": "clinifact", "split": "trial-disjoint", "binarization": "evidence-vs-rest", "n_test": 394,
           "n_train": 1260, "n_validation": 316, "model": "smollm2-135m", "teacher": "local:smollm2-135m",
           "verbalizers": VERBALIZERS,
           "command": "clsgen experiment --config clinifact-trial-disjoint --show-examples"}
    return results, run


def example_page(folder: Path) -> Path:
    """results.html of `fake_run` with texts shown, titled as illustrative (the browser test renders it)."""
    results, run = fake_run(folder, hostile=False)
    page = folder / "results.html"
    page.write_text(render_results_page(results, title="clsgen — CliniFact, trial-disjoint (illustrative figures, "
                                        "not a measured run)", run=run, out_dir=folder, show_examples=True))
    return page


class _Cells(HTMLParser):
    """The rows of the page's tables: [(classes, text)] per row, keyed by the table's class."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.table: str | None = None
        self.cell: list[Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("class") or ""
            self.tables[self.table] = []
        elif tag == "tr" and self.table is not None:
            self.tables[self.table].append([])
        elif tag in ("td", "th") and self.table is not None:
            self.cell = [a.get("class") or "", ""]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.table is not None:
            self.tables[self.table][-1].append((self.cell[0], self.cell[1].strip()))
            self.cell = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell[1] += data


def _tables(page: str) -> dict[str, list[list[tuple[str, str]]]]:
    parser = _Cells()
    parser.feed(page)
    return parser.tables


def _visible_text(page: str) -> str:
    """The text a reader sees: no tags, no attributes (tooltips), no style."""
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    page = re.sub(r"<title>.*?</title>", "", page, flags=re.S)
    return re.sub(r"<[^>]*>", " ", page)


@pytest.fixture()
def page(tmp_path: Path) -> str:
    results, run = fake_run(tmp_path)
    return render_results_page(results, title="clsgen — CliniFact", run=run, out_dir=tmp_path, show_examples=True)


def test_human_metric_names_with_definitions_and_raw_keys_only_in_tooltips(page: str):
    seen = _visible_text(page)
    for name in ("AUROC", "AUPRC", "F1", "Accuracy", "Calibration error (ECE)", "Brier score", "Alignment AUROC",
                 "Alignment κ", "Inconsistency rate", "Readability", "Flesch reading ease"):
        assert re.search(rf"<dt>{re.escape(name)}</dt><dd>\S", page), f"no definition for {name}"
        assert name in seen
    assert "15 equal-width bins" in page and "Cohen&#x27;s κ" in page
    for key in ("alignment_auroc", "alignment_kappa", "inconsistency_rate", "classification-only"):
        assert key not in seen, f"raw key {key} is visible"
    assert "key: inconsistency_rate" in page  # ... but kept in the column's tooltip
    header = _tables(page)["results"][0]
    assert [text for _, text in header[1:6]] == ["AUROC", "AUPRC", "F1", "Accuracy", "Calibration error (ECE)"]


def test_best_value_per_column_is_marked_direction_aware(page: str):
    table = _tables(page)["results"]
    columns = [text for _, text in table[0]]
    names = ("CLSGen", "Classification only", "Generation only", "Prompting (zero-shot)", "CNN", "TF-IDF + LR")
    rows = {name: r for r in table[1:-1] for name in names if r[0][1].startswith(name)}
    assert len(rows) == len(names)

    def best_in(column: str) -> list[str]:
        i = columns.index(column)
        return sorted(name for name, r in rows.items() if "best" in r[i][0].split())

    assert best_in("AUROC") == ["TF-IDF + LR"]  # higher is better
    assert best_in("Calibration error (ECE)") == ["CLSGen"]  # lower is better: 0.041 beats TF-IDF's 0.048
    assert best_in("Brier score") == ["TF-IDF + LR"]
    assert best_in("Inconsistency rate") == ["Generation only"]
    assert best_in("Flesch reading ease") == []  # not ranked
    i = columns.index("Calibration error (ECE)")
    assert "★" in rows["CLSGen"][i][1] and "★" not in rows["Classification only"][i][1]
    assert best_methods({"a": {"metrics": {"auroc": _m(0.8)}}}, "auroc") == set()  # one value: nothing to beat


def test_undefined_metrics_show_a_dash_with_the_note(page: str):
    table = _tables(page)["results"]
    columns = [text for _, text in table[0]]
    cls_only = next(r for r in table if r[0][1].startswith("Classification only"))
    cell = cls_only[columns.index("Alignment AUROC")]
    assert cell[1] == "—"
    tfidf = next(r for r in table if r[0][1].startswith("TF-IDF"))
    assert tfidf[columns.index("Readability")][1] == "—"
    assert "0.000" not in tfidf[columns.index("Readability")][1]
    assert "title='undefined: only one class present'>—</span>" in page
    assert "title='undefined: no explanations given'>—</span>" in page
    assert "0.962" in page and "[0.922, 1.000]" in page and "n=394" in page  # value, interval, rows


def test_generated_text_and_recorded_strings_are_escaped(tmp_path: Path):
    results, run = fake_run(tmp_path)
    run["command"] = "clsgen experiment --out '<img src=x onerror=alert(1)>'"
    results["cnn"]["metrics"]["auroc"] = _m(None, note="<b>undefined</b>")
    page = render_results_page(results, title="<i>t</i>", run=run, out_dir=tmp_path, show_examples=True)
    assert "<script" not in page.lower() and "<img" not in page and "<b>undefined" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; The abstract reports &amp; claims" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;i&gt;t&lt;/i&gt;" in page


def test_same_rows_side_by_side_with_disagreement_flags_and_collapse(page: str):
    sbs = _tables(page)["sbs"]
    assert [text.split("readability")[0] for _, text in sbs[0][1:]] == [
        "CLSGen", "Classification only", "Generation only", "Prompting (zero-shot)"]  # no CNN, no TF-IDF
    assert len(sbs) == 4  # header + three test rows
    ids = [re.search(r"clinifact-\d+", r[0][1]).group(0) for r in sbs[1:]]
    assert ids == ["clinifact-100", "clinifact-101", "clinifact-103"]  # explained by all; both labels
    assert "gold: TRUE" in sbs[1][0][1] and "gold: FALSE" in sbs[2][0][1]
    assert "readability 0.02: 6 of 6 state no verdict" in page  # what its explanations fail at
    assert page.count("⚠ no verdict stated") >= 3  # classification-only on every row
    assert "⚠ explanation says FALSE, label is TRUE" in page  # generation-only on clinifact-101
    assert "p = 0.710 → <b>TRUE</b> <span class=wrong>(wrong)</span>" in page  # ... and wrong against gold
    assert "✓ explanation says TRUE" in page
    assert "TRUE TRUE TRUE TRUE" in page and "(empty explanation)" in page
    assert "reduction in HbA1c" in page


def test_texts_and_ids_hidden_unless_asked(tmp_path: Path):
    results, run = fake_run(tmp_path)
    page = render_results_page(results, title="t", run=run, out_dir=tmp_path)
    assert "HbA1c" not in page and "clinifact-10" not in page and "script" not in page
    assert "words (text hidden)" in page and "--show-examples" in page
    assert "⚠ no verdict stated" in page  # the collapse stays visible without the text


def test_paper_figures_are_reference_marks(page: str):
    assert page.count(f"<title>{PAPER_SOURCE}") == 3  # bands: alignment AUROC, κ, readability
    for text in ("paper 0.95–0.98", "paper 0.61–0.70", "paper &gt; 0.98", "chance"):
        assert text in page
    paper_row = _tables(page)["results"][-1]
    assert paper_row[0][1] == PAPER_SOURCE and "Llama-3.1-8B" in PAPER_SOURCE
    assert [c[1] for c in paper_row if c[1]][1:] == ["above prompting; ≥ CNN", "0.95–0.98", "0.61–0.70",
                                                     "< 0.05 (RLI, our reading)", "> 0.98"]
    assert page.count("<svg") == 4 and page.count("<circle") >= 6 + 3 + 3 + 4


def test_header_names_the_run(page: str):
    for text in ("clinifact", "trial-disjoint, evidence-vs-rest", "394", "smollm2-135m",
                 "clsgen experiment --config clinifact-trial-disjoint", "3 h 14 min"):
        assert text in page, text


def test_missing_pieces_render_not_available(tmp_path: Path):
    results, run = fake_run(tmp_path)
    (tmp_path / "eval" / "prompting" / "predictions.jsonl").unlink()
    (tmp_path / "eval" / "generation-only" / "predictions.jsonl").write_text("not json\n{\"no\": \"id\"}\n")
    results["cnn"]["metrics"] = None
    results["tfidf"] = {}
    page = render_results_page(results, title="t", out_dir=tmp_path)
    assert "not available: no predictions were recorded for this method" in page
    assert "not available: this row is not in the method's predictions" in page
    assert "<dt>command</dt>" not in page and "<dt>time</dt>" in page  # only what was recorded
    nothing = render_results_page({}, title="t")
    assert "Not available: no method has finished." in nothing and "No run details were recorded." in nothing
    no_generators = {"tfidf": results["cnn"]}
    assert "no method that writes explanations" in render_results_page(no_generators, title="t", out_dir=tmp_path)


def test_pick_rows_prefers_rows_every_method_explained():
    a = {"r1": {"explained": True, "label": 0}, "r2": {"explained": True, "label": 1},
         "r3": {"explained": True, "label": 0}, "r4": {"explained": False, "label": 1}}
    b = {"r1": {"explained": True}, "r3": {"explained": True}, "r2": {"explained": False}}
    assert pick_rows({"a": a, "b": b, "c": None}) == ["r1", "r3"]
    assert pick_rows({"a": a}, k=2) == ["r2", "r1"]  # one of each label first
    assert pick_rows({"a": a, "b": {"r9": {"explained": True}}}) == ["r2", "r1", "r3"]  # none common: any
    assert pick_rows({"a": None}) == []


def test_a_metric_fixed_by_construction_is_a_dash_that_says_so(tmp_path: Path):
    results, run = fake_run(tmp_path, ("clsgen", "generation-only"))
    del results["generation-only"]["metrics"]["alignment_auroc"]
    results["generation-only"]["by_construction"] = ["alignment_auroc"]
    page = render_results_page(results, title="t", run=run, out_dir=tmp_path)
    assert page.count("title='fixed by the method&#x27;s design, not a measurement'>—") == 1


def test_a_low_readability_badge_names_the_most_common_failure():
    from clsgen.results_page import _method_badge

    low = {"metrics": {"readability": _m(0.25)}}
    loops = {str(i): {"explained": True, "verdict": 1, "text": "Answer: TRUE\n\n" + "the the the " * 20}
             for i in range(3)}
    fine = {"9": {"explained": True, "verdict": 0, "text": "Answer: FALSE\n\nThe abstract reports no effect of "
                  "the drug on the primary outcome, so the claim is not supported."}}
    assert "3 of 4 loop or repeat (collapse)" in _method_badge(low, {**loops, **fine})
    assert "explanations unreadable" in _method_badge(low, None)  # no predictions to say why
    assert "badge bad" not in _method_badge({"metrics": {"readability": _m(0.9)}}, loops)


# ---------------------------------------------------------------------------------- in Chromium


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=180)


def test_page_renders_in_headless_chromium(tmp_path: Path, chromium: str):
    from PIL import Image

    results, run = fake_run(tmp_path)
    page = tmp_path / "results.html"
    page.write_text(render_results_page(results, title="clsgen — CliniFact", run=run, out_dir=tmp_path,
                                        show_examples=True))
    probe = tmp_path / "probe.html"
    check = """<script>
window.onerror = (m) => { document.body.dataset.errors = (document.body.dataset.errors || '') + m; };
window.addEventListener('load', () => {
  const svgs = [...document.querySelectorAll('svg')].filter(s => s.getBBox().width > 100).length;
  const best = document.querySelectorAll('td.best').length;
  const flags = document.querySelectorAll('.flag.bad').length;
  const external = performance.getEntriesByType('resource').length;
  const wide = document.documentElement.scrollWidth <= window.innerWidth + 1;
  document.body.dataset.check = `svgs=${svgs} best=${best > 5} flags=${flags > 3} external=${external} fits=${wide}`;
});
</script></body>"""
    probe.write_text(page.read_text().replace("</body>", check))
    dom = _chromium(chromium, tmp_path / "profile", "--window-size=1280,900", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, f"the page did not finish loading in Chromium: {dom[:500]}"
    assert found.group(1) == "svgs=4 best=true flags=true external=0 fits=true"
    assert "data-errors" not in dom and "Alignment AUROC" in dom and "6 of 6 state no verdict" in dom

    shot = tmp_path / "page.png"
    _chromium(chromium, tmp_path / "profile", "--window-size=1280,2600", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), "Chromium wrote no screenshot"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2600)
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 200  # text, bands, flags: not a blank page
    assert any(r > 150 and g < 80 and b < 80 for _, (r, g, b) in colors)  # the red disagreement flags drew
