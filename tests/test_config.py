"""Tests for clsgen.config: defaults, YAML + `--set` overrides, every problem reported together."""

from __future__ import annotations

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
