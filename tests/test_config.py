"""Tests for clsgen.config: defaults, YAML + `--set` overrides, every problem reported together."""

from __future__ import annotations

import dataclasses

import pytest

from clsgen.config import Config, config_from_dict, load_config, parse_override, save_config
from clsgen.errors import ClsgenError, ConfigError


def _fields(err: ConfigError) -> set[str]:
    return {p.field for p in err.problems}


def test_defaults_load_and_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model.name == "smollm2-135m"
    assert cfg.data.dataset == "clinifact"
    assert cfg.train.w_cls == 1.0 and cfg.train.w_lm == 1.0
    assert cfg.train.pos_weight == "auto"
    assert cfg.task.truncation is None and cfg.task.max_prompt_tokens is None  # the dataset decides
    assert cfg.validate() == []
    assert Config().to_dict() == cfg.to_dict()


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  name: tiny\n  dtype: float32\n"
        "train:\n  lr: 1e-4\n  batch_size: 2\n  epochs: 3\n"
        "task:\n  verbalizers: [NO, YES]\n"
        "data:\n  label_map: {yes: 1, no: 0}\n"
    )
    cfg = load_config(path, ["train.batch_size=8", "train.head_lr=5e-3", "eval.calibrate=false"])
    assert cfg.model.name == "tiny" and cfg.model.dtype == "float32"
    # '1e-4' is a string to YAML 1.1 (no dot): accepted as a float
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.head_lr == pytest.approx(5e-3)
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)  # int widened
    assert cfg.train.batch_size == 8  # the override wins over the file
    assert cfg.eval.calibrate is False
    # YES / NO / yes / no stay words (YAML 1.1 would read them as booleans)
    assert cfg.task.verbalizers == ["NO", "YES"]
    assert cfg.data.label_map == {"yes": 1, "no": 0}


def test_override_forms():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], "1e-4")
    assert load_config(overrides=["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)
    assert load_config(overrides=["train.lr=0.001"]).train.lr == pytest.approx(1e-3)
    cfg = load_config(overrides=["train.pos_weight=2", "train.max_steps=null", "lora.target_modules=[q_proj, v_proj]"])
    assert cfg.train.pos_weight == 2.0 and cfg.train.max_steps is None
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    # text settings take the text as given, even when it looks like a YAML mapping
    cfg = load_config(overrides=["task.template=Note: {text}", "task.system=Be brief: say yes or no"])
    assert cfg.task.template == "Note: {text}"
    assert cfg.task.system == "Be brief: say yes or no"
    assert load_config(overrides=["task.template={text}"]).task.template == "{text}"
    assert load_config(overrides=['task.template="Q: {q}"']).task.template == "Q: {q}"


def test_override_without_equals_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.lr"])
    assert "train.lr" in str(e.value) and "section.key=value" in str(e.value)


def test_all_problems_reported_together_naming_keys():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.lrr=1", "train.batch_size=two", "train.schedule=sqrt",
                               "model.dtype=float64", "nosection.x=1"])
    err = e.value
    assert isinstance(err, ClsgenError) and err.exit_code == 2
    assert _fields(err) == {"train.lrr", "train.batch_size", "train.schedule", "model.dtype", "nosection"}
    msg = str(err)
    assert msg.startswith("5 problems in the configuration")
    assert "unknown key" in msg and "lr" in msg  # the known keys are listed
    assert "'two'" in msg and "expected int" in msg
    assert "'cosine'" in msg and "'sqrt'" in msg
    assert "'float64'" in msg


def test_wrong_types_in_yaml_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_size: 2.5\n  group_by_length: maybe\nlora: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert _fields(e.value) == {"train.batch_size", "train.group_by_length", "lora"}
    assert all(p.file == str(path) for p in e.value.problems)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("overrides, field", [
    (["train.w_cls=0", "train.w_lm=0"], "train.w_cls"),
    (["train.lr=-1"], "train.lr"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.warmup_ratio=1"], "train.warmup_ratio"),
    (["train.pos_weight=0"], "train.pos_weight"),
    (["lora.dropout=1.5"], "lora.dropout"),
    (["task.max_prompt_tokens=8"], "task.max_prompt_tokens"),
    (["task.verbalizers=[YES, yes]"], "task.verbalizers"),
    (["task.verbalizers=[A]"], "task.verbalizers"),
    (["eval.fixed_threshold=2"], "eval.fixed_threshold"),
    (["eval.rejection_samples=0"], "eval.rejection_samples"),
    (["eval.rejection_temperature=0"], "eval.rejection_temperature"),
])
def test_values_that_cannot_work_are_refused(overrides, field):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert field in _fields(e.value)
    assert field in str(e.value)


def test_one_zero_loss_weight_is_a_baseline_not_an_error():
    assert load_config(overrides=["train.w_cls=0"]).train.w_cls == 0.0
    assert load_config(overrides=["train.w_lm=0"]).train.w_lm == 0.0
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.w_cls=0", "train.w_lm=0"])
    assert "train.w_cls" in str(e.value) and "nothing would be trained" in str(e.value)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1, 2\n  batch_size: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "not valid YAML" in str(e.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "cannot read" in str(e.value)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    with pytest.raises(ConfigError):
        config_from_dict(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_save_config_round_trips(tmp_path):
    cfg = load_config(overrides=["task.verbalizers=[NO, YES]", "train.lr=1e-4", "data.label_map={yes: 1, no: 0}",
                                 "task.template=Note: {text}"])
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again.to_dict() == cfg.to_dict()


# ------------------------------------------------------------------------------ familiar names (aliases)


def test_trainer_trl_and_llama_factory_names_are_aliases(tmp_path):
    from clsgen.config_aliases import ALIASES

    path = tmp_path / "hf.yaml"
    path.write_text("model_name_or_path: tiny\nlearning_rate: 3.0e-4\ngradient_accumulation_steps: 4\n"
                    "per_device_train_batch_size: 2\nnum_train_epochs: 2\nlora_rank: 8\nlora_alpha: 16\n"
                    "lora_dropout: 0.1\nwarmup_ratio: 0.1\nweight_decay: 0.01\nmax_grad_norm: 0.5\nseed: 7\n"
                    "lr_scheduler_type: linear\nreport_to: [tensorboard]\noutput_dir: runs/x\n"
                    "train_file: synth.jsonl\nvalidation_file: dev.jsonl\n"
                    "lora: {lora_target: [q_proj, v_proj]}\ntrain: {save_steps: 5}\n")
    cfg = load_config(path)
    assert (cfg.model.name, cfg.train.lr, cfg.train.grad_accum, cfg.train.batch_size, cfg.train.epochs) == (
        "tiny", 3e-4, 4, 2, 2.0)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 16, 0.1, ["q_proj", "v_proj"])
    assert (cfg.train.warmup_ratio, cfg.train.weight_decay, cfg.train.max_grad_norm, cfg.train.seed) == (
        0.1, 0.01, 0.5, 7)
    assert (cfg.train.schedule, cfg.train.log_with, cfg.train.save_every) == ("linear", ["tensorboard"], 5)
    assert (cfg.output_dir, cfg.data.train_file, cfg.data.dev_file) == ("runs/x", "synth.jsonl", "dev.jsonl")
    # inside a section, and as --set overrides (which win over the file)
    cfg = load_config(path, ["train.learning_rate=1e-5", "per_device_train_batch_size=3"])
    assert (cfg.train.lr, cfg.train.batch_size) == (1e-5, 3)
    # one canonical name per setting: every alias names an existing setting, no alias is used twice
    fields = {f"{s}.{f.name}" for s in ("model", "lora", "data", "train", "eval")
              for f in dataclasses.fields(type(getattr(Config(), s)))}
    assert set(ALIASES) <= fields
    spellings = [a for aliases in ALIASES.values() for a in aliases]
    assert len(spellings) == len(set(spellings))


def test_an_alias_and_its_setting_together_are_refused_naming_both(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("learning_rate: 1.0e-4\ntrain: {lr: 2.0e-4, gradient_accumulation_steps: 2, grad_accum: 3}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = str(e.value)
    assert "both.yaml" in text and "2 problems" in text
    assert "learning_rate" in text and "train.lr" in text
    assert "train.gradient_accumulation_steps" in text and "train.grad_accum" in text
    with pytest.raises(ConfigError, match="model_name_or_path.*model.model_name_or_path|set twice"):
        config_from_dict({"model_name_or_path": "tiny", "model": {"model_name_or_path": "x"}})


def test_unset_paths_stay_out_of_the_saved_config():
    d = Config().to_dict()
    assert "output_dir" not in d and "train_file" not in d["data"] and "dev_file" not in d["data"]
    assert config_from_dict({"output_dir": "o"}).to_dict()["output_dir"] == "o"


def test_a_list_of_words_override_is_a_list_not_text():
    assert parse_override("train.log_with=[tensorboard, wandb]") == (["train", "log_with"], ["tensorboard", "wandb"])
    assert parse_override("report_to=[tensorboard]") == (["train", "log_with"], ["tensorboard"])
    assert parse_override("task.system=Note: [x]") == (["task", "system"], "Note: [x]")
