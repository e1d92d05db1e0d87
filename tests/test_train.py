"""Tests for clsgen.train and the `clsgen train` / `clsgen export` commands, on the tiny model.

A toy task with a learnable signal (positive and negative words), short teacher explanations, a few
optimizer steps: the losses fall, the head separates the classes, only LoRA and head weights move,
a killed run resumed reaches the same weights, accumulation equals a bigger batch, bad configs are
refused before training. One slow test runs the real embedded model on CliniFact.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clsgen.backbones import tiny_model
from clsgen.config import LoraConfig
from clsgen.data import Example
from clsgen.errors import ClsgenError, ConfigError, DataError
from clsgen.inference import score
from clsgen.metrics import auroc
from clsgen.model import load_pretrained
from clsgen.train import train
from clsgen.training_data import load_training_examples

from helpers import make_cfg, toy

REPO = Path(__file__).resolve().parent.parent



def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or n.startswith("head.")}


# ----------------------------------------------------------------------------- one joint run


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    out = tmp_path_factory.mktemp("joint") / "model"
    train_set, dev_set = toy(16, 0, null_every=5), toy(16, 1)
    result = train(make_cfg(max_steps=24, eval_every=8), train_set, dev_set, out, progress=False)
    return result, out, train_set, dev_set


def test_only_lora_and_head_weights_change(joint):
    result = joint[0]
    base = tiny_model().model.state_dict()
    checked = changed = 0
    for name, p in result.model.named_parameters():
        if "lora_" in name:
            changed += "lora_B" in name and bool(p.abs().sum() > 0)  # B starts at zero
            continue
        if name.startswith("head."):
            continue
        original = name.removeprefix("lm.base_model.model.").replace(".base_layer", "")
        assert torch.equal(p.detach(), base[original]), name
        assert not p.requires_grad
        checked += 1
    assert checked >= 10 and changed > 0
    fresh = make_cfg()
    from clsgen.model import DualHeadModel

    init = DualHeadModel.from_backbone(tiny_model(), result.model.task, fresh.lora, seed=fresh.train.seed)
    assert not torch.equal(init.head.linear.weight, result.model.head.linear.weight)


def test_losses_fall_and_the_head_separates_the_classes(joint):
    result, out = joint[0], joint[1]
    steps = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 25))
    first, last = steps[0], steps[-4:]
    assert np.mean([r["lm_loss"] for r in last]) < first["lm_loss"] - 0.3
    assert np.mean([r["cls_loss"] for r in last]) < 0.3 < first["cls_loss"]
    evals = [r for r in read_log(out) if r.get("event") == "eval"]
    assert [e["step"] for e in evals] == [8, 16, 24]
    assert result.best_dev_auroc >= 0.95 and result.best_step in (8, 16, 24)


def test_summary_files_and_checkpoints(joint):
    result, out = joint[0], joint[1]
    s = json.loads((out / "train_summary.json").read_text())
    assert s == result.summary and s["steps"] == 24 and s["tokens_per_s"] > 0
    assert 0.5 < s["padding_efficiency"] <= 1 and s["peak_rss_mb"] > 0
    assert s["best_dev_auroc"] == result.best_dev_auroc and s["n_with_explanation"] == 12
    assert s["pos_weight"] == 1.0 and s["selection"] == "dev_auroc"
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors", "clsgen.json",
            "tokenizer.json", "train_log.jsonl", "train_summary.json", "checkpoints"} <= names
    ckpt = out / "checkpoints" / "step-24"
    assert {"model", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"} <= {p.name for p in ckpt.iterdir()}
    assert (out / "checkpoints" / f"best-step-{result.best_step}" / "clsgen.json").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 24 and state["finished"] is True
    assert state["data_position"] == {"epoch": 12, "step_in_epoch": 0, "steps_per_epoch": 2}
    assert len(list((out / "checkpoints").glob("best-step-*"))) == 1
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written dirs


def test_saved_model_is_the_best_and_round_trips(joint):
    result, out, _, dev = joint
    meta = json.loads((out / "clsgen.json").read_text())
    assert meta["train"]["step"] == result.best_step
    assert meta["train"]["dev_auroc"] == pytest.approx(result.best_dev_auroc)
    loaded = load_pretrained(out, dtype="float32")
    p_mem, p_disk = score(result.model, dev), score(loaded, dev)
    np.testing.assert_allclose(p_mem, p_disk, atol=1e-6)
    # left-padded prompt-only scoring agrees with the right-padded dev evaluation used for selection
    assert auroc([ex.label for ex in dev], p_disk) == pytest.approx(result.best_dev_auroc)


def test_an_existing_run_is_not_overwritten_and_resume_checks_the_config(joint):
    _, out, train_set, dev_set = joint
    with pytest.raises(ClsgenError, match="--resume"):
        train(make_cfg(max_steps=24, eval_every=8), train_set, dev_set, out, progress=False)
    with pytest.raises(ClsgenError, match=r"train\.lr: 0\.01 -> 0\.02"):
        train(make_cfg(max_steps=24, eval_every=8, lr=2e-2), train_set, dev_set, out, resume=True, progress=False)


# ----------------------------------------------------------------------------- resume, accumulation


class Killed(Exception):
    pass


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path):
    train_set, dev_set = toy(12, 2, null_every=4), toy(8, 3)
    cfg = make_cfg(lora_dropout=0.1, max_steps=7, batch_size=2, grad_accum=2, save_every=3, eval_every=2,
                   warmup_ratio=0.2, verdict_only=False)  # 3 steps per epoch: the run crosses an epoch boundary
    whole = train(cfg, train_set, dev_set, tmp_path / "whole", progress=False)

    def kill(step, record):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, train_set, dev_set, tmp_path / "killed", progress=False, on_step=kill)
    # killed after step 5: the checkpoint of step 3 remains, with its best model (step 2); the best of
    # step 4 belongs to the lost steps: the resumed run recomputes it
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == [
        "best-step-2", "best-step-4", "step-3"]
    resumed = train(cfg, train_set, dev_set, tmp_path / "killed", resume=True, progress=False)
    a, b = trainable_state(whole.model), trainable_state(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7, msg=k)
    assert (resumed.best_step, resumed.best_dev_auroc) == (whole.best_step, whole.best_dev_auroc)

    def losses(out):
        return [(r["step"], r.get("loss") or r.get("dev_auroc")) for r in read_log(out)]

    got, want = losses(tmp_path / "killed"), losses(tmp_path / "whole")
    assert [s for s, _ in got] == [s for s, _ in want]  # the killed run's records past step 3 were dropped
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    # the last checkpoint (not only the best) matches too
    for name in ("adapter_model.safetensors", "head.safetensors"):
        from safetensors.torch import load_file

        x = load_file(str(tmp_path / "whole" / "checkpoints" / "step-7" / "model" / name))
        y = load_file(str(tmp_path / "killed" / "checkpoints" / "step-7" / "model" / name))
        assert all(torch.allclose(x[k], y[k], atol=1e-7) for k in x)


def test_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    train_set = toy(10, 4, null_every=3)  # 10 = 4 + 4 + 2: a ragged last step with a filler micro-batch
    big = train(make_cfg(max_steps=3, batch_size=4), train_set, [], tmp_path / "big", progress=False)
    acc = train(make_cfg(max_steps=3, batch_size=2, grad_accum=2), train_set, [], tmp_path / "acc",
                progress=False)
    a, b = trainable_state(big.model), trainable_state(acc.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-6, msg=k)
    la, lb = read_log(tmp_path / "big"), read_log(tmp_path / "acc")
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-5)
    assert big.best_step is None and big.summary["selection"] is None  # no dev split: last weights


def test_loop_loss_is_the_models_joint_loss(tmp_path):
    """Step 1's logged loss equals DualHeadModel's own w_cls * BCE + w_lm * CE on the same batch."""
    from clsgen.collate import collate_train, encode_example, plan_epoch
    from clsgen.datasets import task_from_config
    from clsgen.model import DualHeadModel

    train_set = toy(6, 5, null_every=2)
    cfg = make_cfg(max_steps=1, batch_size=6, w_cls=0.7, w_lm=0.4, pos_weight=3.0)
    train(cfg, train_set, [], tmp_path / "m", progress=False)
    logged = read_log(tmp_path / "m")[0]
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    backbone = tiny_model()
    task = task_from_config(cfg)
    model = DualHeadModel.from_backbone(backbone, task, cfg.lora, seed=cfg.train.seed)
    enc = [encode_example(task, backbone.tokenizer, ex.fields, ex.label, ex.explanation, 128) for ex in train_set]
    idx = plan_epoch([len(e) for e in enc], 6, 1, 1, cfg.train.seed, 0)[0].micro[0][0].indices
    b = collate_train([enc[i] for i in idx], backbone.tokenizer.pad_token_id)
    lm_weights = torch.ones(b["labels"].shape)  # pos_weight on positive rows' verdict tokens too
    for r, i in enumerate(idx):
        if enc[i].label == 1:
            lm_weights[r, enc[i].verdict_at] = 3.0
    assert any(enc[i].label == 1 for i in idx) and any(not enc[i].explained for i in idx)
    with torch.no_grad():
        out = model(b["input_ids"], b["attention_mask"], b["cls_index"], labels=b["labels"],
                    cls_labels=b["cls_labels"], w_cls=0.7, w_lm=0.4, pos_weight=3.0, lm_weights=lm_weights)
    assert logged["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert logged["cls_loss"] == pytest.approx(out.cls_loss.item(), rel=1e-5)
    assert logged["lm_loss"] == pytest.approx(out.lm_loss.item(), rel=1e-5)


# ----------------------------------------------------------------------------- baselines and refusals


def test_classification_only_and_generation_only_baselines(tmp_path):
    train_set, dev_set = toy(8, 6), toy(8, 7)
    cls_only = train(make_cfg(max_steps=2, w_lm=0.0), train_set, dev_set, tmp_path / "cls", progress=False)
    rec = read_log(tmp_path / "cls")[0]
    assert rec["lm_loss"] is None and rec["cls_loss"] > 0
    assert cls_only.summary["selection"] == "dev_auroc"
    assert not cls_only.summary["head_only"]  # LoRA in every layer: the layers under the head ran

    gen_only = train(make_cfg(max_steps=2, w_cls=0.0, lr=5e-2), train_set, dev_set, tmp_path / "gen",
                     progress=False)
    rec = read_log(tmp_path / "gen")[0]
    assert rec["cls_loss"] is None and rec["lm_loss"] > 0
    assert gen_only.summary["selection"] == "dev_lm_loss" and not gen_only.summary["head_only"]
    from clsgen.model import DualHeadModel

    cfg = make_cfg()
    init = DualHeadModel.from_backbone(tiny_model(), gen_only.model.task, cfg.lora, seed=cfg.train.seed)
    assert torch.equal(init.head.linear.weight, gen_only.model.head.linear.weight)  # the head is not trained
    assert any(p.abs().sum() > 0 for n, p in gen_only.model.named_parameters() if "lora_B" in n)


def test_bf16_base_with_mixed_precision_and_gradient_checkpointing(tmp_path):
    cfg = make_cfg(max_steps=2, batch_size=4, mixed_precision="bf16", gradient_checkpointing=True)
    cfg.model.dtype = "bfloat16"
    result = train(cfg, toy(8, 11), toy(4, 12), tmp_path / "m", progress=False)
    rec = read_log(tmp_path / "m")[0]
    assert np.isfinite(rec["loss"]) and np.isfinite(rec["grad_norm"]) and rec["grad_norm"] > 0
    trainable = dict(result.model.trainable_parameters())
    assert {p.dtype for p in trainable.values()} == {torch.float32}  # LoRA and head stay float32
    assert any(p.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n)
    assert json.loads((tmp_path / "m" / "clsgen.json").read_text())["dtype"] == "bfloat16"


def test_early_stopping_and_missing_trackers(tmp_path, caplog):
    cfg = make_cfg(max_steps=6, lr=0.0, head_lr=0.0, eval_every=1, early_stopping=1, log_with=["wandb"],
                   select_tolerance=0.0)
    with caplog.at_level("WARNING"):
        result = train(cfg, toy(8, 13), toy(4, 14), tmp_path / "m", progress=False)
    assert "wandb is not installed" in caplog.text or importlib.util.find_spec("wandb")
    # nothing learns (lr 0): the second evaluation does not improve, and the run stops there
    assert result.steps == 2 and result.summary["stopped_early"] and result.best_step == 1


def test_a_plateau_in_dev_auroc_keeps_the_latest_model(tmp_path):
    """Within select_tolerance of the best dev AUROC a later evaluation replaces the kept model (the
    LM side may still be learning); beyond it, the earlier model stays."""
    cfg = make_cfg(max_steps=3, lr=0.0, head_lr=0.0, eval_every=1)
    result = train(cfg, toy(8, 13), toy(4, 14), tmp_path / "m", progress=False)
    assert result.best_step == 3 and result.summary["peak_dev_auroc"] == result.best_dev_auroc
    assert json.loads((tmp_path / "m" / "clsgen.json").read_text())["train"]["step"] == 3


def test_configs_that_cannot_work_are_refused_before_training(tmp_path):
    data = toy(4, 8)
    with pytest.raises(ConfigError, match=r"train\.w_cls.*both loss weights are 0"):
        train(make_cfg(w_cls=0.0, w_lm=0.0), data, [], tmp_path / "a", progress=False)
    bad_lora = dataclasses.replace(make_cfg(), lora=LoraConfig(target_modules=["q_proj", "c_attn"]))
    with pytest.raises(ClsgenError, match=r"lora\.target_modules \['c_attn'\] do not exist"):
        train(bad_lora, data, [], tmp_path / "b", progress=False)
    with pytest.raises(ClsgenError, match=r"train\.max_length=12 is below the prompt's fixed part"):
        train(make_cfg(max_length=12), data, [], tmp_path / "c", progress=False)
    assert not any((tmp_path / d / "checkpoints").exists() for d in "abc")


def test_load_training_examples_reads_synth_records_and_plain_examples(tmp_path):
    synth = tmp_path / "synth.jsonl"
    records = [
        {"id": "a", "label": 1, "explanation": "It improved.", "verdict": 1, "text": "It improved.\n\nAnswer: YES",
         "attempts": 1, "teacher": "t", "fields": {"text": "improved"}, "seconds": 0.1},
        {"id": "b", "label": 0, "explanation": None, "verdict": None, "text": None, "attempts": 3,
         "teacher": "t", "fields": {"text": "no"}, "seconds": 0.3},
        {"id": "c", "label": 0, "explanation": "It improved.", "verdict": 1, "fields": {"text": "odd"}},
    ]
    synth.write_text("".join(json.dumps(r) + "\n" for r in records))
    got = load_training_examples(synth)
    assert [(e.id, e.label, e.explanation) for e in got] == [("a", 1, "It improved."), ("b", 0, None), ("c", 0, None)]
    assert got[0].fields == {"text": "improved"}
    plain = load_training_examples([Example("x", {"text": "t"}, 1), {"id": "y", "text": "u", "label": "no"},
                                    Example("z", {"text": "v"}, 0, {"explanation": "Why."})])
    assert [(e.id, e.label, e.fields, e.explanation) for e in plain] == [
        ("x", 1, {"text": "t"}, None), ("y", 0, {"text": "u"}, None), ("z", 0, {"text": "v"}, "Why.")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "label": 7, "fields": {"text": "a"}}\n{"id": "1", "label": 1, "fields": {"text": "b"}, '
                   '"explanation": 3}\n')
    with pytest.raises(DataError) as e:
        load_training_examples(bad)
    msg = str(e.value)
    assert "3 problems" in msg and "row 1, field 'label'" in msg and "duplicate id '1'" in msg
    assert "row 2, field 'explanation'" in msg


# ----------------------------------------------------------------------------- the CLI


def run_cli(*args: str, cwd: Path, threads: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "clsgen.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`clsgen ARGS` in this process (the subprocess form is exercised by the slow test)."""
    from clsgen.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rows = [{"id": ex.id, "text": ex.fields["text"], "label": ex.label, "split": split}
            for split, exs in (("train", toy(8, 9)), ("validation", toy(8, 10))) for ex in exs]
    (d / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    synth = [{"id": ex.id, "label": ex.label, "explanation": ex.explanation, "verdict": ex.label,
              "fields": ex.fields} for ex in toy(8, 9)]
    (d / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synth))
    (d / "c.yaml").write_text("model: {name: tiny, dtype: float32}\nlora: {r: 4, alpha: 8}\n"
                              "task: {template: 'Note: {text}', system: 'Is the note positive?'}\n"
                              "train: {batch_size: 4, max_length: 128, save_every: 1}\n")
    return d


TRAIN_ARGS = ("train", "--config", "c.yaml", "--dataset", "toy.jsonl", "--data", "synth.jsonl", "--no-progress")


def test_cli_train_resume_and_export(cli_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(cli_dir)
    code, out, err = cli(capsys, *TRAIN_ARGS, "--out", "model", "--max-steps", "2")
    assert code == 0, err
    assert "tokens/s" in out and "model saved to model" in out
    s = json.loads((cli_dir / "model" / "train_summary.json").read_text())
    assert s["steps"] == 2 and s["n_train"] == 8 and s["n_dev"] == 8 and s["n_with_explanation"] == 8
    assert (cli_dir / "model" / "adapter_model.safetensors").is_file()
    assert (cli_dir / "model" / "train_config.yaml").is_file()
    # --resume on a finished run: nothing left to train, the model is written again
    code, out, err = cli(capsys, *TRAIN_ARGS, "--out", "model", "--max-steps", "2", "--resume")
    assert code == 0, err
    assert "resumed from" in out and "at step 2" in out

    code, out, err = cli(capsys, "export", "--merge", "model", "--out", str(tmp_path / "merged"))
    assert code == 0, err
    from peft import PeftModel

    merged = load_pretrained(tmp_path / "merged", dtype="float32")
    adapter = load_pretrained(cli_dir / "model", dtype="float32")
    assert not isinstance(merged.lm, PeftModel)
    dev = [Example("a", {"text": "improved benefit"}), Example("b", {"text": "no placebo difference"})]
    np.testing.assert_allclose(score(merged, dev), score(adapter, dev), atol=1e-5)


def test_cli_refuses_a_bad_config_with_the_setting_named(cli_dir, capsys, monkeypatch):
    monkeypatch.chdir(cli_dir)
    code, _, err = cli(capsys, *TRAIN_ARGS, "--out", "bad", "--set", "train.w_cls=0", "--set", "train.w_lm=0")
    assert code == 2 and "train.w_cls" in err and "both loss weights are 0" in err
    code, _, err = cli(capsys, *TRAIN_ARGS, "--out", "bad", "--set", "lora.target_modules=[q_proj, nope]")
    assert code == 2 and "lora.target_modules ['nope'] do not exist" in err
    code, _, err = cli(capsys, *TRAIN_ARGS, "--out", "bad", "--set", "train.max_length=8")
    assert code == 2 and "train.max_length=8 is below the prompt's fixed part" in err
    assert not (cli_dir / "bad" / "checkpoints").exists()


@pytest.mark.slow
def test_cli_train_embedded_model_on_clinifact(tmp_path, data_dir):
    from clsgen.config import load_config
    from clsgen.datasets import load_dataset

    cfg = load_config(overrides=[f"data.data_dir={data_dir}", "data.max_train=4"])
    ds = load_dataset(cfg.data, cfg.task)
    synth = [{"id": ex.id, "label": ex.label, "fields": ex.fields, "verdict": ex.label,
              "explanation": ("The abstract reports a significant improvement in the primary outcome."
                              if ex.label else "The abstract reports no significant difference.")}
             for ex in ds.train]
    (tmp_path / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synth))
    proc = run_cli("train", "--dataset", "clinifact", "--data-dir", str(data_dir), "--data", "synth.jsonl",
                   "--out", "model", "--max-steps", "2", "--no-progress", "--set", "data.max_eval=4",
                   "--set", "train.batch_size=2", "--set", "task.max_prompt_tokens=256",
                   "--set", "train.max_length=320", "--set", "lora.dropout=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stdout
    s = json.loads((tmp_path / "model" / "train_summary.json").read_text())
    assert s["steps"] == 2 and s["tokens_per_s"] > 0 and s["n_dev"] == 4 and s["n_with_explanation"] == 4
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()


def test_cli_train_positional_config_settings_and_paths_from_yaml(cli_dir, capsys, monkeypatch):
    """`clsgen train run.yaml key=value`: the config file and settings as plain arguments, familiar
    names, and the data / dev / output paths taken from the YAML."""
    monkeypatch.chdir(cli_dir)
    (cli_dir / "hf.yaml").write_text((cli_dir / "c.yaml").read_text() + "output_dir: from-yaml\n"
                                     "train_file: synth.jsonl\ndataset: toy.jsonl\n")
    code, out, err = cli(capsys, "train", "hf.yaml", "max_steps=1", "learning_rate=1e-3", "--no-progress")
    assert code == 0, err
    saved = (cli_dir / "from-yaml" / "train_config.yaml").read_text()
    assert "lr: 0.001" in saved and "max_steps: 1" in saved
    assert json.loads((cli_dir / "from-yaml" / "train_summary.json").read_text())["n_with_explanation"] == 8
    assert (cli_dir / "from-yaml" / "README.md").is_file()
    code, _, err = cli(capsys, "train", "hf.yaml", "--config", "c.yaml", "--no-progress")
    assert code == 2 and "more than one config file" in err
    code, _, err = cli(capsys, "train", "c.yaml", "--dataset", "toy.jsonl", "--no-progress")
    assert code == 2 and "no output folder" in err and "output_dir" in err


# ------------------------------------------------------------------------------ accelerate decides


def _capture_accelerators(monkeypatch) -> list:
    import accelerate

    made = []

    class Recording(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((kwargs, self.mixed_precision, self.device.type))

    monkeypatch.setattr(accelerate, "Accelerator", Recording)
    return made


def test_accelerate_mixed_precision_from_the_environment_is_honoured(tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` / `accelerate config` reach the loop as
    ACCELERATE_MIXED_PRECISION: train() must not override it (nor the device) unless the config
    names a precision."""
    made = _capture_accelerators(monkeypatch)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    result = train(make_cfg(max_steps=1), toy(8, 1), [], tmp_path / "env", progress=False)
    assert result.steps == 1
    kwargs, precision, device = made[-1]
    assert precision == "bf16" and kwargs.get("mixed_precision") is None
    # the device is forced to the CPU only where there is no GPU at all (torchrun's CPU processes need it)
    assert kwargs.get("cpu", False) == (not torch.cuda.is_available())
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    train(make_cfg(max_steps=1), toy(8, 1), [], tmp_path / "no", progress=False)
    assert made[-1][1] == "no"
    # the config's own choice wins when it names one
    train(make_cfg(max_steps=1, mixed_precision="bf16"), toy(8, 1), [], tmp_path / "cfg", progress=False)
    assert made[-1][0]["mixed_precision"] == "bf16" and made[-1][1] == "bf16"


def test_clsgen_classifier_fit_trains_then_calibrates(tmp_path):
    """The scikit-learn-like face: fit trains (what `clsgen train` does) and calibrates on validation;
    predict_proba gives two columns."""
    from clsgen.classifier import Classifier
    from clsgen.estimator import ClsgenClassifier

    clf = ClsgenClassifier(make_cfg(max_steps=3, eval_every=3), out_dir=tmp_path / "m")
    assert isinstance(clf, Classifier)
    with pytest.raises(ClsgenError, match="not trained yet"):
        clf.predict_proba(toy(2, 5))
    dev = [Example(ex.id, ex.fields, ex.label) for ex in toy(8, 10)]
    assert clf.fit(toy(8, 9), dev) is clf
    assert clf.train_result.steps == 3 and (tmp_path / "m" / "adapter_model.safetensors").is_file()
    assert clf.calibration.n == 8 and clf.threshold == clf.calibration.threshold
    both = clf.predict_proba(dev)
    assert both.shape == (8, 2) and np.allclose(both.sum(axis=1), 1)
    assert np.allclose(both[:, 1], clf.positive_proba(dev))
    # what fit trained is what the folder holds: loaded again, the same head logits
    from clsgen.inference import Predictor

    np.testing.assert_allclose(Predictor.from_pretrained(tmp_path / "m", dtype="float32").logits(dev),
                               clf.predictor.logits(dev), atol=1e-5)
    with pytest.raises(ClsgenError, match="out_dir"):
        ClsgenClassifier(make_cfg())
