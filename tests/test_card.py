"""The model card: every saved model folder has a README.md whose snippet, run with plain transformers +
PEFT + safetensors on a copy of the folder elsewhere, gives clsgen's probability; the front matter
names the public base model and the stored metrics."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from clsgen.backbones import EMBEDDED, EMBEDDED_HUB_ID, load_model, tiny_model
from clsgen.card import load_snippet, record_evaluation, write_model_card
from clsgen.inference import Predictor
from clsgen.model import DualHeadModel
from clsgen.model_io import base_model_spec, read_meta
from clsgen.task import Task

from helpers import randomize_lora

TASK = Task("claims", "Decide whether the abstract supports the claim.", "Claim: {claim}\nAbstract: {abstract}",
            ("FALSE", "TRUE"))
FIELDS = [{"claim": "Aspirin lowers fever.", "abstract": "Patients randomised to aspirin improved (p < 0.05)."},
          {"claim": "No effect was seen.", "abstract": "No significant difference in the primary outcome."}]


def snippet_of(card: str) -> str:
    """The last python block of a card (the plain transformers one)."""
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert blocks, "the card has no python snippet"
    return blocks[-1]


def with_fields(code: str, fields: dict) -> str:
    code, n = re.subn(r"^fields = .*$", f"fields = {json.dumps(fields)}", code, flags=re.M)
    assert n == 1
    return code


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture()
def local_base(tmp_path):
    """The tiny model saved as an ordinary local HF checkpoint: a base model plain transformers loads."""
    backbone = tiny_model()
    base = tmp_path / "base"
    backbone.model.save_pretrained(str(base))
    backbone.tokenizer.save_pretrained(str(base))
    return base


def trained_like(base, seed=0) -> DualHeadModel:
    """A model on `base` whose LoRA and head are random (so a wrong snippet gives another number)."""
    model = DualHeadModel.from_backbone(load_model(str(base), dtype="float32"), TASK)
    randomize_lora(model, seed=seed, scale=0.3)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 1.0)
        model.head.linear.bias.fill_(0.1)
    model.meta.update(temperature=1.7, threshold=0.42)
    return model


def test_copied_folder_loads_with_plain_peft_and_the_cards_snippet(tmp_path, local_base):
    """Done-when of issue 18: copy the folder, point every cache elsewhere, run the card's snippet
    in a fresh Python without clsgen: the probability equals clsgen's within 1e-4."""
    trained_like(local_base).save_pretrained(tmp_path / "machine-a" / "model")
    moved = tmp_path / "machine-b" / "model"
    shutil.copytree(tmp_path / "machine-a" / "model", moved)
    shutil.rmtree(tmp_path / "machine-a")
    card = (moved / "README.md").read_text()
    code = snippet_of(card)
    assert "clsgen" not in code.replace("clsgen.json", "")  # plain transformers / PEFT / safetensors

    expected = Predictor.from_pretrained(moved).predict_proba(FIELDS)
    assert len(set(expected.round(3))) == 2  # two different inputs, two different answers
    empty = tmp_path / "empty-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLSGEN", "HF_", "PYTHONPATH"))}
    env.update(HF_HOME=str(empty), XDG_CACHE_HOME=str(empty), CLSGEN_CACHE_DIR=str(empty / "clsgen"),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for fields, p in zip(FIELDS, expected):
        out = subprocess.run([sys.executable, "-I", "-c", with_fields(code, fields)], cwd=moved, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        got = float(re.search(r"P\(label 1\) = ([0-9.]+)", out.stdout).group(1))
        assert abs(got - p) < 1e-4, (got, p)
        assert out.stdout.strip().endswith(TASK.verbalizers[int(p >= 0.42)])


def test_snippet_follows_the_head_settings(tmp_path, local_base, monkeypatch):
    """head.layer, head.pooling and shift/scale in head.safetensors change what the snippet computes:
    here against a hand computation over the decoder's hidden states."""
    model = trained_like(local_base, seed=1)
    folder = model.save_pretrained(tmp_path / "m")
    hidden = model.head.linear.in_features
    g = torch.Generator().manual_seed(3)
    shift, scale = torch.randn(hidden, generator=g), torch.rand(hidden, generator=g) + 0.5
    head = {**load_file(str(folder / "head.safetensors")), "shift": shift, "scale": scale}
    save_file(head, str(folder / "head.safetensors"))
    meta = read_meta(folder)
    meta["head"] = {"layer": 1, "pooling": "mean"}
    (folder / "clsgen.json").write_text(json.dumps(meta))
    write_model_card(folder)
    code = snippet_of((folder / "README.md").read_text())
    assert "hidden_states[1]" in code and ".mean(0)" in code and 'head["shift"]' in code

    ids = model.task.encode_prompt(model.tokenizer, FIELDS[0]).input_ids
    with torch.no_grad():
        h = model.decoder(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0].mean(0)
        logit = ((h - shift) / scale) @ head["linear.weight"][0] + head["linear.bias"][0]
    expected = torch.sigmoid(logit / 1.7).item()
    monkeypatch.chdir(folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(with_fields(code, FIELDS[0]), "snippet", "exec"), {})  # noqa: S102
    got = float(re.search(r"P\(label 1\) = ([0-9.]+)", printed.getvalue()).group(1))
    assert abs(got - expected) < 1e-5
    # and the default (no head entry) reads the final normed state at the last token
    default = load_snippet({"task": {"template": "{x}"}, "dtype": "float32"})
    assert "out.last_hidden_state[0, -1]" in default and "shift" not in default


def test_embedded_base_is_named_by_its_hub_id_and_still_resolves_offline(tmp_path):
    """A folder trained on the embedded model: adapter_config.json names the hub id, clsgen.json records
    the GGUF origin beside it and keeps the spec clsgen resolves offline."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/u/.cache/x",
                                                            "r": 8}))
    meta = {"base_model": EMBEDDED, "task": {"name": "claims", "system": "", "template": "{claim}",
                                             "verbalizers": ["NO", "YES"]},
            "threshold": 0.3, "temperature": 2.0, "dtype": "bfloat16", "hidden_size": 64,
            "calibration": {"split": "validation", "n": 40, "threshold_method": "max_f1",
                            "after": {"auroc": {"value": 0.81, "low": 0.7, "high": 0.9, "n": 40},
                                      "ece": {"value": 0.05, "low": None, "high": None, "n": 40}}}}
    (folder / "clsgen.json").write_text(json.dumps(meta))
    write_model_card(folder)
    assert json.loads((folder / "adapter_config.json").read_text()) == {"base_model_name_or_path": EMBEDDED_HUB_ID,
                                                                        "r": 8}
    saved = read_meta(folder)
    assert saved["base_model_id"] == EMBEDDED_HUB_ID and saved["base_model_origin"]["gguf"].endswith(".gguf")
    assert base_model_spec(saved, folder) == EMBEDDED  # clsgen loads the embedded checkpoint, offline
    card = (folder / "README.md").read_text()
    front = front_matter(card)
    assert front["base_model"] == EMBEDDED_HUB_ID and front["library_name"] == "peft"
    assert "clsgen" in front["tags"] and f"base_model:adapter:{EMBEDDED_HUB_ID}" in front["tags"]
    (result,) = front["model-index"][0]["results"]
    assert result["dataset"]["split"] == "validation"
    auroc = next(m for m in result["metrics"] if m["type"] == "auroc")
    assert auroc["value"] == 0.81 and auroc["args"]["ci95"] == [0.7, 0.9] and "0.700-0.900" in auroc["name"]
    assert "**2**" in card and "**0.3**" in card  # temperature and threshold
    assert "dtype=torch.bfloat16" in snippet_of(card) and '"system"' not in snippet_of(card)


def test_evaluation_metrics_reach_the_card(tmp_path, local_base):
    folder = trained_like(local_base).save_pretrained(tmp_path / "m")
    assert "model-index" not in front_matter((folder / "README.md").read_text())  # nothing measured yet
    assert "base_model" not in front_matter((folder / "README.md").read_text())  # a local path is no hub id
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"n": 120, "threshold": 0.42, "info": {"dataset": "clinifact", "split": "test"},
                                   "metrics": {"auroc": {"value": 0.77, "low": 0.69, "high": 0.85, "n": 120},
                                               "flesch": {"value": 41.2, "low": 39.0, "high": 43.5, "n": 60}}}))
    record_evaluation(folder, metrics)
    card = (folder / "README.md").read_text()
    (result,) = front_matter(card)["model-index"][0]["results"]
    assert result["dataset"] == {"name": "clinifact", "type": "clinifact", "split": "test"}
    assert [m["type"] for m in result["metrics"]] == ["auroc", "flesch"]
    assert "| AUROC | 0.7700 | 0.690 to 0.850 |" in card


def test_every_saved_model_has_a_card_including_merged(tmp_path, local_base, monkeypatch):
    model = trained_like(local_base)
    model.save_pretrained(tmp_path / "m")
    model.export_merged(tmp_path / "merged")
    for folder, library in ((tmp_path / "m", "peft"), (tmp_path / "merged", "transformers")):
        card = (folder / "README.md").read_text()
        assert front_matter(card)["library_name"] == library
        assert "base_model:adapter" not in str(front_matter(card)["tags"]) or library == "peft"
    code = snippet_of((tmp_path / "merged" / "README.md").read_text())
    assert "PeftModel" not in code
    expected = Predictor.from_pretrained(tmp_path / "merged").predict_proba(FIELDS[:1])[0]
    monkeypatch.chdir(tmp_path / "merged")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(with_fields(code, FIELDS[0]), "snippet", "exec"), {})  # noqa: S102
    assert abs(float(re.search(r"P\(label 1\) = ([0-9.]+)", printed.getvalue()).group(1)) - expected) < 1e-4


class FakeHub:
    """A local stand-in for huggingface_hub.HfApi: records calls and copies what would be uploaded."""

    def __init__(self, root, fail: Exception | None = None):
        self.root, self.fail, self.repos = root, fail, {}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, token=None):
        if self.fail is not None:
            raise self.fail
        self.repos.setdefault(repo_id, {"private": private, "token": token, "files": []})

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, token=None, commit_message=None,
                      ignore_patterns=None):
        import fnmatch
        from pathlib import Path

        repo = self.repos[repo_id]
        for p in sorted(Path(folder_path).rglob("*")):
            rel = p.relative_to(folder_path).as_posix()
            if p.is_file() and not any(fnmatch.fnmatch(rel, pat) for pat in ignore_patterns or []):
                repo["files"].append(rel)
                (self.root / repo_id / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, self.root / repo_id / rel)
        return type("CommitInfo", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()


def test_push_private_uploads_the_model_not_the_training_state(tmp_path, local_base, monkeypatch, capsys):
    import huggingface_hub

    from clsgen.cli import main

    folder = trained_like(local_base).save_pretrained(tmp_path / "run")
    (folder / "checkpoints" / "step-2").mkdir(parents=True)
    (folder / "checkpoints" / "step-2" / "optimizer.bin").write_bytes(b"x")
    (folder / "train_log.jsonl").write_text("{}\n")
    (folder / "README.md").unlink()  # push refreshes the card
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: hub)
    monkeypatch.setenv("MY_HF_TOKEN", "hf_secret")
    code = main(["push", str(folder), "me/claims-model", "--private", "--token-env", "MY_HF_TOKEN"])
    out, err = capsys.readouterr()
    assert code == 0, err
    repo = hub.repos["me/claims-model"]
    assert repo["private"] is True and repo["token"] == "hf_secret"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "head.safetensors",
            "clsgen.json", "tokenizer.json"} <= set(repo["files"])
    assert not [f for f in repo["files"] if f.startswith("checkpoints/") or f == "train_log.jsonl"]
    assert "(private)" in out and "hf_secret" not in out + err
    # what landed on the fake hub loads with clsgen like the original
    same = Predictor.from_pretrained(tmp_path / "hub" / "me" / "claims-model").predict_proba(FIELDS)
    assert same == pytest.approx(Predictor.from_pretrained(folder).predict_proba(FIELDS), abs=1e-6)


def test_push_errors_are_one_clear_line(tmp_path, local_base, monkeypatch, capsys):
    import huggingface_hub

    from clsgen.cli import main

    folder = trained_like(local_base).save_pretrained(tmp_path / "m")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: FakeHub(tmp_path, fail=OSError("Network is unreachable")))
    assert main(["push", str(folder), "me/x"]) == 2
    assert "could not push" in capsys.readouterr().err
    assert main(["push", str(folder), "no-slash"]) == 2
    assert "user-or-org/name" in capsys.readouterr().err
    assert main(["push", str(folder), "me/x", "--token-env", "CLSGEN_UNSET_VAR"]) == 2
    assert "CLSGEN_UNSET_VAR" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "me/x"]) == 2
    assert "not a clsgen model directory" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_model_folder_names_the_hub_id_and_loads_offline(tmp_path, monkeypatch):
    """The real embedded model: the saved adapter names HuggingFaceTB/SmolLM2-135M-Instruct, and clsgen
    loads the folder back with the hub unreachable (the embedded checkpoint, not a download)."""
    from clsgen.model import load_pretrained

    model = DualHeadModel.from_backbone(load_model(EMBEDDED, dtype="float32"), TASK)
    folder = model.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID
    front = front_matter((folder / "README.md").read_text())
    assert front["base_model"] == EMBEDDED_HUB_ID
    assert "Q4_1" in read_meta(folder)["base_model_origin"]["gguf"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = load_pretrained(folder, dtype="float32")
    ids = torch.tensor([model.task.encode_prompt(model.tokenizer, FIELDS[0]).input_ids])
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids), lm_positions="none").cls_logits
        b = again(ids, torch.ones_like(ids), lm_positions="none").cls_logits
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("layer,pooling", [("mix", "mean"), (2, "last"), (1, "mean")])
def test_snippet_reproduces_a_trained_readout(tmp_path, local_base, monkeypatch, layer, pooling):
    """A head that reads another layer (or a mix of all), standardised, with LoRA in the top layer
    only: the card's snippet gives the probability clsgen's Predictor gives."""
    from clsgen.config import HeadConfig, LoraConfig

    model = DualHeadModel.from_backbone(load_model(str(local_base), dtype="float32"), TASK,
                                        LoraConfig(r=4, top_layers=1), head=HeadConfig(layer=layer, pooling=pooling))
    randomize_lora(model, seed=4, scale=0.3)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.head.shift.copy_(torch.randn(model.head.shift.shape, generator=g))
        model.head.scale.copy_(torch.rand(model.head.scale.shape, generator=g) + 0.5)
        model.head.linear.weight.normal_(0, 1.0, generator=g)
        if model.head.mix is not None:
            model.head.mix.normal_(0, 1.0, generator=g)
    model.meta.update(temperature=1.3, threshold=0.5)
    folder = model.save_pretrained(tmp_path / "m")
    expected = float(Predictor(model.eval()).predict_proba([FIELDS[1]])[0])
    code = with_fields(snippet_of((folder / "README.md").read_text()), FIELDS[1])
    monkeypatch.chdir(folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "snippet", "exec"), {})  # noqa: S102
    got = float(re.search(r"P\(label 1\) = ([0-9.]+)", printed.getvalue()).group(1))
    assert abs(got - expected) < 1e-5, (got, expected)
