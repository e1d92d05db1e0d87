"""`ClsgenClassifier`: a trained (or to-be-trained) clsgen model in the `fit` / `predict_proba` /
`explain` protocol that every classifier shares, like scikit-learn.

It sits above both `inference` (the `Predictor` it wraps) and `calibration` (which works on logits
alone): built from a config, `fit` trains (through `clsgen.train`) and calibrates; built from a
trained model, `calibrate` chooses the threshold and temperature on validation data.
`calibrate_predictor` is the same step for a bare `Predictor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import DEFAULT_THRESHOLD, Calibration, apply_calibration, fit_calibration, store_calibration
from .classifier import TwoColumnProba, labels_of
from .config import Config
from .data import Example
from .errors import ClsgenError
from .inference import Item, Prediction, Predictor
from .metrics import sigmoid
from .model import DualHeadModel
from .task import Task


def calibrate_predictor(predictor: Predictor, examples: Sequence[Example], method: str = "max_f1",
                        fixed: float = DEFAULT_THRESHOLD, scale_temperature: bool = True, n_boot: int = 0,
                        split: str = "validation") -> Calibration:
    """Fit on `examples` (dev) and set the model's meta threshold/temperature (in memory); see
    `clsgen.calibration.fit_calibration`."""
    if not examples:
        raise ClsgenError(f"the {split} split is empty: nothing to calibrate on")
    y = labels_of(examples)
    cal = fit_calibration(y, predictor.logits(examples), method=method, fixed=fixed,
                          scale_temperature=scale_temperature, n_boot=n_boot, split=split)
    apply_calibration(predictor.model.meta, cal)
    return cal


class ClsgenClassifier(TwoColumnProba):
    """clsgen in the shared classifier protocol (`fit` / `predict_proba` / `explain`), like scikit-learn.

    Built from a `Config` (`ClsgenClassifier(cfg, out_dir="runs/x")`), `fit(train, validation)` trains
    LoRA + head on `train` (synth records or labelled examples; see `train.train`), keeps the best
    checkpoint by dev AUROC, then chooses the threshold and fits the temperature on `validation`.
    Built from a trained model (a folder, a `DualHeadModel` or a `Predictor`), it is already fitted:
    `fit` refuses to pretend, and `calibrate(validation)` chooses threshold and temperature (kept in
    the model's meta; `save_calibration(dir)` stores them). `predict_proba` gives (n, 2) columns for
    labels 0 and 1; `positive_proba` P(label 1) alone.
    """

    name = "clsgen"

    def __init__(self, model: DualHeadModel | Predictor | str | Path | Config, *, out_dir: str | Path | None = None,
                 task: Task | None = None, threshold_method: str = "max_f1", fixed_threshold: float = 0.5,
                 calibrate: bool = True, progress: bool = False, **predictor_kwargs: Any):
        self.config: Config | None = model if isinstance(model, Config) else None
        self.out_dir = None if out_dir is None else Path(out_dir)
        self._task = task
        self._progress = progress
        self._predictor_kwargs = predictor_kwargs
        self.predictor: Predictor | None
        if self.config is not None:
            if self.out_dir is None:
                raise ClsgenError("ClsgenClassifier(config) trains into a folder: pass out_dir=")
            self.predictor = None
            self.model_dir: Path | None = self.out_dir
        elif isinstance(model, Predictor):
            self.predictor, self.model_dir = model, None
        elif isinstance(model, DualHeadModel):
            self.predictor, self.model_dir = Predictor(model, **predictor_kwargs), None
        else:
            self.predictor, self.model_dir = Predictor.from_pretrained(model, **predictor_kwargs), Path(model)
        self.threshold_method = threshold_method
        self.fixed_threshold = fixed_threshold
        self.calibrate_temperature = calibrate
        self.calibration: Any = None
        self.train_result: Any = None
        self._explained: dict[tuple[int, ...], float] = {}

    def _fitted(self) -> Predictor:
        if self.predictor is None:
            raise ClsgenError("this clsgen classifier is not trained yet: call fit(train, validation) first")
        return self.predictor

    @property
    def model(self) -> DualHeadModel:
        return self._fitted().model

    @property
    def task(self) -> Task:
        return self._fitted().task

    @property
    def threshold(self) -> float:
        return self._fitted().threshold

    def fit(self, train: Sequence[Any], validation: Sequence[Example]) -> ClsgenClassifier:
        """Train on `train` (select and calibrate on `validation`); see the class docstring."""
        if self.config is None:
            raise ClsgenError("this classifier holds a trained model, so fit() would not train it; build "
                              "one from a config to train (ClsgenClassifier(cfg, out_dir=...).fit(train, "
                              "validation)), or call calibrate(validation) to choose the threshold and "
                              "temperature")
        from .train import train as train_model
        from .training_data import load_training_examples

        dev = load_training_examples(list(validation)) if validation else []
        self.train_result = train_model(self.config, train, dev or None, self.out_dir,
                                        task=self._task, progress=self._progress)
        model = self.train_result.model
        self.predictor = (Predictor(model, **self._predictor_kwargs) if model is not None
                          else Predictor.from_pretrained(self.out_dir, **self._predictor_kwargs))
        self._explained = {}
        if dev:
            self.calibrate([Example(ex.id, dict(ex.fields), ex.label) for ex in dev])
        return self

    def calibrate(self, validation: Sequence[Example]) -> ClsgenClassifier:
        """Choose the threshold and fit the temperature on `validation` (the model is unchanged)."""
        self._explained = {}
        self.calibration = calibrate_predictor(self._fitted(), validation, method=self.threshold_method,
                                               fixed=self.fixed_threshold,
                                               scale_temperature=self.calibrate_temperature)
        return self

    def save_calibration(self, path: str | Path | None = None) -> Path:
        """Store the fitted threshold and temperature in a model directory's clsgen.json (atomically)."""
        target = Path(path) if path is not None else self.model_dir
        if target is None:
            raise ClsgenError("no model directory to store the calibration in; pass one")
        if self.calibration is None:
            raise ClsgenError("nothing to store: call calibrate(validation) (or fit) first")
        return store_calibration(target, self.calibration)

    def positive_proba(self, examples: Sequence[Example]) -> np.ndarray:
        """Calibrated P(label 1). Rows explained or verdict-scored by the previous `explain` /
        `verdicts` calls reuse the logit of that prefill (the probability that came with the
        explanation or verdict) instead of a second prefill; that reuse happens once, on the next
        call only."""
        predictor = self._fitted()
        reuse, self._explained = self._explained, {}
        if not reuse:
            return predictor.predict_proba(examples)
        keys = [tuple(predictor.encode(ex).input_ids) for ex in examples]
        todo = [i for i, k in enumerate(keys) if k not in reuse]
        logits = np.array([reuse.get(k, np.nan) for k in keys], dtype=np.float64)
        if todo:
            logits[todo] = predictor.logits([examples[i] for i in todo])
        return sigmoid(logits / predictor.temperature_scale)

    def predict(self, examples: Sequence[Item], explain: bool = True) -> list[Prediction]:
        """Predictions (probability, label, explanation) as `Predictor.predict` gives them."""
        return self._fitted().predict(examples, explain=explain)

    def explain(self, examples: Sequence[Example], max_new_tokens: int = 256) -> list[str]:
        """The generated text (explanation + verdict line) for each example; `cut_off` tells, per
        text, whether the token limit stopped it before its end of turn; with rejection sampling,
        `draws` and `first_verdicts` tell how many explanations were decoded and what the first stated."""
        predictor = self._fitted()
        saved = predictor.max_new_tokens
        predictor.max_new_tokens = max_new_tokens
        try:
            predictions = predictor.predict(examples, explain=True)
        finally:
            predictor.max_new_tokens = saved
        self._explained = {tuple(predictor.encode(ex).input_ids): p.logit
                           for ex, p in zip(examples, predictions)}
        stops = set(predictor.stop_token_ids)
        self.cut_off = [not (p.token_ids and p.token_ids[-1] in stops) for p in predictions]
        redrawn = predictor.rejection_samples > 1  # rejection sampling: what the first draws said, and how many
        self.draws = [p.draws for p in predictions] if redrawn else None
        self.first_verdicts = [p.first_verdict for p in predictions] if redrawn else None
        return [p.text or "" for p in predictions]

    def verdicts(self, examples: Sequence[Example]) -> list[int | None]:
        """The verdict the LM states for each example, scored teacher-forced without generating: the
        more likely verbalizer right after 'Answer: ' at the start of the turn. Defined only for
        models trained with the verdict first (task.verdict_position 'first'). The same prefill gives
        the head's logits, which the next `positive_proba` call reuses."""
        predictor = self._fitted()
        heads, verdicts = predictor.verdict_logits(examples)
        self._explained.update({tuple(predictor.encode(ex).input_ids): float(h) for ex, h in zip(examples, heads)})
        if predictor.condition_on_head:  # the verdict it writes is the head's label, by construction
            return [int(p >= predictor.threshold) for p in sigmoid(heads / predictor.temperature_scale)]
        return [int(v > 0) for v in verdicts]
