"""Safe loading: a model directory is data, never code.

Each property is proven with real files: a pickle whose unpickling would create a marker file, a
model directory with custom code that would create the marker when imported, JSON files in a model
directory that name paths outside it. A positive control shows that each planted file really does
what it threatens (so a passing test is not an artefact of a harmless file).

Who is trusted: the user's CLI flags, config files and Python calls (they may name any path, and
opt into remote code); not trusted: HTTP requests, and the contents of model directories
(config.json, clsgen.json, tokenizer_config.json, shard indexes, weight files).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import runpy
import shutil
from pathlib import Path

import pytest
import torch

from clsgen.backbones import check_model_dir, load_model, load_tokenizer, tiny_model
from clsgen.errors import ClsgenError
from clsgen.model import DualHeadModel, load_pretrained
from clsgen.task import Task

TASK = Task(name="notes", system="Positive?", template="Note: {text}", verbalizers=("NO", "YES"))


class Planted:
    """Unpickling this calls open(marker, 'w'): the file appears iff the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path: Path, marker: Path) -> Path:
    torch.save({"weight": Planted(marker)}, path)
    return path


def assert_is_a_real_threat(pickle_file: Path, marker: Path) -> None:
    """Positive control: a plain unpickle of the file does create the marker."""
    assert not marker.exists()
    torch.load(pickle_file, weights_only=False)
    assert marker.exists()
    marker.unlink()


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


@pytest.fixture
def no_prompt(monkeypatch):
    """transformers asks on stdin whether to run a model's code when trust_remote_code is None: fail if asked."""
    def refuse(*a, **k):
        raise AssertionError("transformers asked on stdin whether to run a model's own code")
    monkeypatch.setattr(builtins, "input", refuse)


@pytest.fixture(scope="module")
def backbone():
    return tiny_model()


def base_dir(backbone, path: Path) -> Path:
    """A plain HF model directory (config, tokenizer, safetensors weights)."""
    backbone.model.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved(backbone, tmp_path_factory):
    """A clsgen model directory (adapter + head) on the tiny base."""
    path = tmp_path_factory.mktemp("safety") / "model"
    DualHeadModel.from_backbone(backbone, TASK).save_pretrained(path)
    return path


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------ no pickle


def test_base_model_with_only_pickled_weights_is_refused_not_unpickled(backbone, tmp_path, marker):
    d = tmp_path / "base"
    d.mkdir()
    backbone.model.config.save_pretrained(d)
    backbone.tokenizer.save_pretrained(d)
    plant_pickle(d / "pytorch_model.bin", marker)
    with pytest.raises(ClsgenError, match="only pickled weights .*pytorch_model.bin.*safetensors only"):
        load_model(str(d), dtype="float32")
    assert not marker.exists()
    assert_is_a_real_threat(d / "pytorch_model.bin", marker)


def test_clsgen_model_with_pickled_adapter_is_refused(saved, tmp_path, marker):
    d = copy_of(saved, tmp_path / "m")
    (d / "adapter_model.safetensors").unlink()
    plant_pickle(d / "adapter_model.bin", marker)  # PEFT would fall back to it (torch.load)
    with pytest.raises(ClsgenError, match="never unpickles"):
        load_pretrained(d)
    assert not marker.exists()
    assert_is_a_real_threat(d / "adapter_model.bin", marker)


def test_merged_model_with_pickled_weights_is_refused(saved, tmp_path, marker):
    merged = load_pretrained(saved, dtype="float32").export_merged(tmp_path / "merged")
    (merged / "model.safetensors").unlink()
    plant_pickle(merged / "pytorch_model.bin", marker)
    with pytest.raises(ClsgenError, match="only pickled weights"):
        load_pretrained(merged)
    assert not marker.exists()


# ------------------------------------------------------------------------------ no remote code


def custom_code_dir(backbone, path: Path, marker: Path, model_type: str, tokenizer_code: bool) -> Path:
    """A model directory whose config (and tokenizer) point at evil.py through auto_map."""
    base_dir(backbone, path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                   "AutoModelForCausalLM": "evil.EvilForCausalLM"})
    (path / "config.json").write_text(json.dumps(config))
    if tokenizer_code:
        tok = json.loads((path / "tokenizer_config.json").read_text())
        tok.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
        (path / "tokenizer_config.json").write_text(json.dumps(tok))
    (path / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        f"class EvilConfig(LlamaConfig):\n    model_type = {model_type!r}\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return path


def assert_code_is_a_real_threat(path: Path, marker: Path) -> None:
    assert not marker.exists()
    runpy.run_path(str(path / "evil.py"))
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("model_type", ["evil", "llama"])
def test_custom_code_never_runs_without_the_flag(backbone, tmp_path, marker, no_prompt, model_type):
    d = custom_code_dir(backbone, tmp_path / "custom", marker, model_type, tokenizer_code=True)
    with pytest.raises(ClsgenError, match="own Python code.*--trust-remote-code"):
        load_model(str(d), dtype="float32")
    with pytest.raises(ClsgenError, match="own Python code"):
        load_tokenizer(str(d))
    assert not marker.exists()
    assert_code_is_a_real_threat(d, marker)


def test_auto_map_over_a_known_architecture_loads_the_builtin_class(backbone, tmp_path, marker, no_prompt):
    d = custom_code_dir(backbone, tmp_path / "custom", marker, "llama", tokenizer_code=False)
    b = load_model(str(d), dtype="float32")
    assert type(b.model).__module__.startswith("transformers.models.llama")
    assert not marker.exists()


def test_clsgen_model_whose_tokenizer_has_custom_code(saved, tmp_path, marker, no_prompt):
    d = copy_of(saved, tmp_path / "m")
    tok = json.loads((d / "tokenizer_config.json").read_text())
    tok.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    (d / "tokenizer_config.json").write_text(json.dumps(tok))
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ClsgenError, match="own Python code"):
        load_pretrained(d)
    assert not marker.exists()


def test_remote_code_is_off_by_default_everywhere():
    import inspect

    from clsgen import backbones, model
    from clsgen.cli import build_parser
    from clsgen.config import ModelConfig

    assert ModelConfig().trust_remote_code is False
    for fn in (backbones.load_model, backbones.load_tokenizer, model.load_pretrained):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    parser = build_parser()
    for argv in (["train", "--out", "x"], ["export", "--merge", "m", "--out", "x"], ["evaluate", "--model", "m"],
                 ["predict", "--model", "m", "t"], ["calibrate", "--model", "m"]):
        assert parser.parse_args(argv).trust_remote_code is False
    assert parser.parse_args(["evaluate", "--model", "m", "--trust-remote-code"]).trust_remote_code is True


# ------------------------------------------------------------------------------ paths stay inside


@pytest.mark.parametrize("spec", ["../victim", "../../etc", "./victim", "a/b/c", ".", "~/victim", "/abs/../x"])
def test_clsgen_json_cannot_name_a_relative_base_model(backbone, saved, tmp_path, monkeypatch, spec):
    base_dir(backbone, tmp_path / "victim")  # a loadable model: following '../victim' would succeed
    d = copy_of(saved, tmp_path / "models" / "m")
    meta = json.loads((d / "clsgen.json").read_text())
    (d / "clsgen.json").write_text(json.dumps({**meta, "base_model": spec}))
    monkeypatch.chdir(tmp_path / "models")
    with pytest.raises(ClsgenError, match="does not follow|relative path"):
        load_pretrained(d)
    # the caller (trusted) may name the base model explicitly
    assert load_pretrained(d, base_model="tiny", dtype="float32").meta["base_model"] == spec


def test_local_base_model_is_recorded_by_absolute_path(backbone, tmp_path, monkeypatch):
    base_dir(backbone, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    m = DualHeadModel.from_backbone(load_model("base", dtype="float32"), TASK)
    assert m.meta["base_model"] == str((tmp_path / "base").resolve())
    m.save_pretrained(tmp_path / "m")
    monkeypatch.chdir(tmp_path / "m")  # loads from anywhere
    assert load_pretrained(tmp_path / "m").meta["base_model"] == str((tmp_path / "base").resolve())


def test_clsgen_json_task_template_cannot_reach_into_objects(saved, tmp_path):
    """The prompt template comes from clsgen.json; fields must be plain names, so a template cannot
    read attributes or items of the inputs (str.format would follow '{text.__class__...}')."""
    d = copy_of(saved, tmp_path / "m")
    meta = json.loads((d / "clsgen.json").read_text())
    for template in ("{text.__class__.__mro__}", "{text[0]}"):
        (d / "clsgen.json").write_text(json.dumps({**meta, "task": {**meta["task"], "template": template}}))
        with pytest.raises(ClsgenError, match="not a valid template"):
            load_pretrained(d)
    (d / "clsgen.json").write_text(json.dumps({**meta, "task": {**meta["task"], "code": "x"}}))
    with pytest.raises(ClsgenError, match="no valid task"):
        load_pretrained(d)


def test_shard_index_cannot_name_weights_outside_the_directory(backbone, tmp_path):
    outside = base_dir(backbone, tmp_path / "outside")  # real weights: transformers would load them
    d = tmp_path / "m"
    d.mkdir()
    backbone.model.config.save_pretrained(d)
    backbone.tokenizer.save_pretrained(d)
    from safetensors import safe_open

    with safe_open(str(outside / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "../outside/model.safetensors" for k in keys}}))
    with pytest.raises(ClsgenError, match="outside its directory"):
        load_model(str(d), dtype="float32")


def test_tokenizer_config_cannot_name_files_outside(saved, tmp_path):
    d = copy_of(saved, tmp_path / "m")
    tok = json.loads((d / "tokenizer_config.json").read_text())
    for bad in ("../outside/tokenizer.json", "/etc/passwd"):
        (d / "tokenizer_config.json").write_text(json.dumps({**tok, "tokenizer_file": bad}))
        with pytest.raises(ClsgenError, match="points outside its directory"):
            load_pretrained(d)
        with pytest.raises(ClsgenError, match="points outside its directory"):
            check_model_dir(d, weights=False)
    (d / "tokenizer_config.json").write_text(json.dumps({**tok, "tokenizer_file": "tokenizer.json"}))
    check_model_dir(d, weights=False)  # a plain name in the directory is fine


def test_http_requests_cannot_name_a_model_or_a_file(saved):
    """The served model is fixed when the server starts; a request's `model` is only compared with
    its name, and static files cannot be reached outside the static folder."""
    from fastapi.testclient import TestClient

    from clsgen.inference import Predictor
    from clsgen.server import create_app

    app = create_app(Predictor(load_pretrained(saved, dtype="float32"), max_new_tokens=2), model_name="m",
                     threads=1)
    with TestClient(app) as client:
        for model in ("../../etc/passwd", str(saved), "/etc/passwd"):
            r = client.post("/v1/classify", json={"text": "a note", "model": model})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        for path in ("/static/../inference.py", "/static/..%2finference.py", "/static/%2e%2e/%2e%2e/clsgen/model.py",
                     "/static/../server/app.py"):
            r = client.get(path)
            assert r.status_code == 404 and "import" not in r.text


def test_dataset_names_are_builtins_or_paths_the_user_gave(tmp_path, monkeypatch):
    """data.dataset is a built-in name or a path as the user wrote it (relative to the working
    directory); it is never joined to --data-dir, so '../x' cannot climb out of the data folder."""
    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset

    data_dir = tmp_path / "data" / "inner"
    data_dir.mkdir(parents=True)
    (tmp_path / "data" / "x.jsonl").write_text('{"id": "1", "text": "t", "label": 1}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClsgenError, match="neither a built-in dataset"):
        load_dataset(DataConfig(dataset="../x.jsonl", data_dir=str(data_dir)))


# ------------------------------------------------------------------------------ training checkpoints


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A tiny two-step training run with a checkpoint (optimizer, scheduler, RNG) after step 1."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from clsgen.train import train

    from helpers import make_cfg, toy

    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(make_cfg(max_steps=2, save_every=1), toy(8, 0), toy(8, 1), out, progress=False)
    return out


def _resume(run: Path) -> None:
    from clsgen.train import train

    from helpers import make_cfg, toy

    train(make_cfg(max_steps=2, save_every=1), toy(8, 0), toy(8, 1), run, resume=run / "checkpoints" / "step-1",
          progress=False)


def test_resume_loads_optimizer_state_without_unpickling_code(checkpointed, tmp_path, marker):
    """accelerate loads optimizer.bin (and random_states_*.pkl) with torch.load(weights_only=True)."""
    run = copy_of(checkpointed, tmp_path / "run")
    plant_pickle(run / "checkpoints" / "step-1" / "optimizer.bin", marker)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        _resume(run)
    assert not marker.exists()
    assert_is_a_real_threat(run / "checkpoints" / "step-1" / "optimizer.bin", marker)


def test_resume_never_unpickles_the_scheduler_state(checkpointed, tmp_path, marker):
    run = copy_of(checkpointed, tmp_path / "run")
    plant_pickle(run / "checkpoints" / "step-1" / "custom_checkpoint_0.pkl", marker)
    with contextlib.suppress(Exception):  # a refusal is fine; running the pickle is not
        _resume(run)
    assert not marker.exists()
