"""clsgen: classify-and-explain fine-tuning of causal LLMs (CLSGen).

The Python API, imported lazily so that `import clsgen` stays cheap (no torch until a name is used):

    from clsgen import load_config, load_dataset, train, Predictor, ClsgenClassifier, evaluate

    cfg = load_config("run.yaml", ["train.max_steps=200"])
    ds = load_dataset(cfg.data, cfg.task)
    result = train(cfg, ds.train, ds.validation, "runs/x/model", task=ds.task)
    predictor = Predictor.from_pretrained("runs/x/model")
    predictor.predict(ds.test[:2])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # configuration and data
    "Config": "config", "load_config": "config",
    "Example": "data",
    "load_dataset": "datasets", "DatasetSplits": "datasets",
    "Task": "task",
    "ClsgenError": "errors", "ConfigError": "errors", "DataError": "errors",
    # models
    "load_model": "backbones",
    "DualHeadModel": "model", "load_pretrained": "model",
    # training, inference, evaluation
    "train": "train", "score": "inference", "load_training_examples": "training_data", "TrainResult": "train",
    "Predictor": "inference", "Prediction": "inference", "ClsgenClassifier": "estimator",
    "evaluate": "evaluate", "EvalResult": "evaluate",
    "fit_calibration": "calibration", "calibrate_predictor": "estimator",
    "synthesize": "synth", "make_teacher": "synth",
    "run_experiment": "experiment",
    "write_model_card": "card", "push_to_hub": "hub",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clsgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; nothing is imported at run time
    from .backbones import load_model
    from .calibration import fit_calibration
    from .card import write_model_card
    from .config import Config, load_config
    from .data import Example
    from .datasets import DatasetSplits, load_dataset
    from .errors import ClsgenError, ConfigError, DataError
    from .estimator import ClsgenClassifier, calibrate_predictor
    from .evaluate import EvalResult, evaluate
    from .experiment import run_experiment
    from .hub import push_to_hub
    from .inference import Prediction, Predictor, score
    from .model import DualHeadModel, load_pretrained
    from .synth import make_teacher, synthesize
    from .task import Task
    from .train import TrainResult, train
    from .training_data import load_training_examples
