"""What a user installs and imports: the package metadata, the extras, the lazy Python API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import clsgen

REPO = Path(__file__).resolve().parent.parent


def test_pyproject_declares_a_torch_range_extras_urls_and_the_license():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = [d for d in meta["dependencies"] if re.match(r"torch\b", d)]
    assert len(torch) == 1 and "==" not in torch[0] and ">=" in torch[0] and "<" in torch[0]
    extras = meta["optional-dependencies"]
    assert {"fastapi", "uvicorn"} <= {re.split(r"[<>=\[]", d)[0] for d in extras["serve"]}
    assert "matplotlib" in {re.split(r"[<>=\[]", d)[0] for d in extras["report"]}
    core = {re.split(r"[<>=\[]", d)[0] for d in meta["dependencies"]}
    assert not core & {"fastapi", "uvicorn", "matplotlib"} and {"filelock", "pyphen"} <= core
    assert {"Homepage", "Source", "Issues"} <= set(meta["urls"])
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert (REPO / "clsgen" / "py.typed").is_file()


def test_make_installs_the_exact_cpu_torch_first_then_the_extras():
    recipe = (REPO / "Makefile").read_text()
    torch_at = recipe.index("pip install -q torch==2.13.0")
    package_at = recipe.index("pip install -q -e '.[serve,report,dev]'")
    assert torch_at < package_at


def test_import_clsgen_is_cheap_and_the_api_is_lazy():
    code = ("import sys, clsgen; heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow  # a fresh interpreter imports the whole stack
def test_the_python_api_names_resolve():
    # `train` and `evaluate` are also submodule names: in a process that imported the submodule
    # `clsgen.train` first, the package attribute is that module (a known defect, see issue 18's note);
    # a user's first `from clsgen import train` gets the function, checked in a fresh interpreter
    code = ("from clsgen import train, evaluate; from clsgen.train import train as t; "
            "from clsgen.evaluate import evaluate as e; assert train is t and evaluate is e")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    from clsgen import (
        ClsgenClassifier,
        Config,
        Predictor,
        load_config,
        load_dataset,
        load_pretrained,
        push_to_hub,
        write_model_card,
    )
    assert callable(load_dataset) and callable(load_config) and callable(load_pretrained)
    assert callable(push_to_hub) and callable(write_model_card)
    assert Predictor.__name__ == "Predictor" and ClsgenClassifier.name == "clsgen" and Config().train.lr > 0
    assert set(clsgen.__all__) <= set(dir(clsgen))
    for name in clsgen.__all__:
        assert getattr(clsgen, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        clsgen.nope  # noqa: B018


def test_a_missing_extra_names_the_pip_extra(monkeypatch):
    from clsgen import report
    from clsgen.errors import ClsgenError

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(ClsgenError, match=r"pip install 'clsgen\[report\]'"):
        report._figure()
