"""Tests for clsgen.report: a self-contained HTML report (inline PNG plots, no scripts, no external
assets), inputs hidden unless asked for, and (when Chromium is installed) that it renders its plots."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clsgen.metrics import compute_metrics
from clsgen.report import render_report, write_report

CHROMIUM = "/usr/bin/chromium"
SECRET = "Patient Jane Roe, MRN 12345, discharged"


def _data(n: int = 60, seed: int = 0, explained: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + (y - 0.5) * 0.5 + rng.normal(0, 0.25, n), 0, 1)
    threshold = 0.5
    rows, texts, verdicts = [], [], []
    for i in range(n):
        pred = int(p[i] >= threshold)
        is_explained = explained is None or i < explained
        verdict = None if i % 7 == 0 else pred if i % 5 else 1 - pred
        text = f"Reason <b>{i}</b> & more.\n\nAnswer: {'TRUE' if verdict else 'FALSE'}" if verdict is not None \
            else f"Reason {i} without a verdict."
        row = {"id": f"ex-{i}", "label": int(y[i]), "probability": float(p[i]), "prediction": pred,
               "correct": pred == y[i], "explained": is_explained, "fields": {"note": f"{SECRET} {i}"}}
        if is_explained:
            row.update(verdict=verdict, explanation=text.split("\n\nAnswer")[0], text=text)
        rows.append(row)
        texts.append(text if is_explained else None)
        verdicts.append(verdict if is_explained else None)
    metrics = compute_metrics(y, p, threshold, verdicts=verdicts, explanations=texts, n_boot=50)
    return dict(y=y, p=p, threshold=threshold, metrics=metrics, rows=rows, verbalizers=("FALSE", "TRUE"))


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_is_self_contained_with_four_inline_plots():
    page = render_report(**_data(), info={"dataset": "toy"})
    pngs = _pngs(page)
    assert len(pngs) == 4 and all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000 for png in pngs)
    lowered = page.lower()
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//|file:)", lowered)
    assert "url(" not in lowered
    for title in ("ROC curve", "Precision-recall curve", "Reliability diagram", "Probability histogram"):
        assert title in page
    for label in ("AUROC", "Alignment AUROC", "Readability", "95% interval"):
        assert label in page


def test_metric_table_shows_intervals_and_row_counts():
    data = _data(explained=20)
    page = render_report(**data)
    m = data["metrics"]["readability"]
    assert m.n == 20
    assert f"<td class=num>{m.n}</td>" in page
    assert f"[{m.low:.3f}, {m.high:.3f}]" in page
    assert f"<td class=num>{data['metrics']['auroc'].n}</td>" in page


def test_texts_hidden_by_default_and_explanations_escaped():
    data = _data()
    hidden = render_report(**data)  # neither inputs nor generated text: they can quote clinical notes
    assert SECRET not in hidden and "Reason" not in hidden and "ex-1<" not in hidden
    assert "--show-examples" in hidden and "Most confident" not in hidden
    examples = render_report(**data, show_examples=True)
    assert SECRET not in examples and "ex-1" in examples and "not shown" in examples
    assert "<b>" not in examples and "&lt;b&gt;" in examples  # generated text is escaped, never markup
    shown = render_report(**data, show_inputs=True)  # implies the examples
    assert SECRET in shown
    assert "Most confident right" in shown and "Most confident wrong" in shown


def test_degenerate_inputs_do_not_crash():
    one_class = _data(n=12)
    one_class["y"] = np.zeros(12, dtype=int)
    for r in one_class["rows"]:
        r["label"], r["correct"], r["explained"] = 0, r["prediction"] == 0, False
    one_class["metrics"] = compute_metrics(one_class["y"], one_class["p"], 0.5, n_boot=20)
    page = render_report(**one_class)
    assert "undefined: only one class present" in page  # the AUROC row says why it has no value
    assert len(_pngs(page)) == 4 and "No explanations were generated" in page
    uncal = render_report(**_data(), p_uncalibrated=np.linspace(0, 1, 60),
                          metrics_uncalibrated=_data()["metrics"])
    assert "uncalibrated" in uncal


def _render_in_chromium(html_file: Path, tmp_path: Path) -> str:
    """Load a copy of the report with a checking script appended; return what the script found."""
    probe = tmp_path / "probe.html"
    check = """<script>
window.onerror = (m) => { document.body.dataset.errors = (document.body.dataset.errors || '') + m; };
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100).length;
  const external = performance.getEntriesByType('resource').length;
  document.body.dataset.check = `images=${imgs.length} loaded=${ok} external=${external}`;
});
</script></body>"""
    probe.write_text(html_file.read_text().replace("</body>", check))
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    return out.stdout


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed (apt-get install chromium)")
def test_report_renders_its_plots_in_headless_chromium(tmp_path):
    report = tmp_path / "report.html"
    write_report(report, **_data())
    dom = _render_in_chromium(report, tmp_path)
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, f"the page did not finish loading in Chromium: {dom[:500]}"
    assert found.group(1) == "images=4 loaded=4 external=0"
    assert "data-errors" not in dom
    assert shutil.which(CHROMIUM)
