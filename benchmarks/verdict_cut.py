"""Is κ between the head's label and the LM's verdict lowered by where the verdict is cut? Scores the
verdict teacher-forced (`Predictor.verdict_logits`) on the validation and test rows of a trained
verdict-first model and prints κ, agreement and alignment AUROC with the verdict cut at 0.5 (what
generation does), at the cut that maximises the verdict's F1 on validation, and at the head's own
(uncalibrated) threshold:

    python benchmarks/verdict_cut.py --model runs/clinifact-trial-disjoint/models/clsgen+consistency \
        --config clsgen/configs/clinifact-trial-disjoint.yaml

The model's stored threshold and temperature (from its experiment's evaluation) define the head's label.
"""

from __future__ import annotations

import argparse

from _path import HERE  # noqa: F401  (this checkout's clsgen on sys.path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--config", required=True, help="the config the model was trained with (its data split)")
    args = p.parse_args()

    import numpy as np
    from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

    from clsgen.config import load_config
    from clsgen.datasets import load_dataset
    from clsgen.inference import Predictor
    from clsgen.metrics import sigmoid

    cfg = load_config(args.config, [])
    ds = load_dataset(cfg.data, cfg.task)
    predictor = Predictor.from_pretrained(args.model, batch_size=cfg.eval.batch_size)
    _, val_verdict = predictor.verdict_logits([e.fields for e in ds.validation])
    test_head, test_verdict = predictor.verdict_logits([e.fields for e in ds.test])
    y_val, y_test = np.array([e.label for e in ds.validation]), np.array([e.label for e in ds.test])
    temperature, threshold = predictor.temperature_scale, predictor.threshold
    p_head = sigmoid(test_head / temperature)
    head_label = (p_head >= threshold).astype(int)
    print(f"head: test AUROC {roc_auc_score(y_test, test_head):.3f}, threshold {threshold:.3f} at temperature "
          f"{temperature:.3f}; LM verdict: test AUROC {roc_auc_score(y_test, test_verdict):.3f}")
    val_f1 = max(np.unique(val_verdict), key=lambda c: (f1_score(y_val, (val_verdict >= c).astype(int)), -abs(c)))
    cuts = {"0.5 (generation)": 0.0, "max F1 on validation": float(val_f1),
            "the head's threshold": float(np.log(threshold / (1 - threshold)) * temperature)}
    for name, cut in cuts.items():
        verdict = (test_verdict >= cut).astype(int)
        align = roc_auc_score(verdict, p_head) if len(set(verdict)) == 2 else float("nan")
        print(f"verdict cut {name} (log-odds {cut:+.3f}): kappa {cohen_kappa_score(head_label, verdict):.3f}, "
              f"agreement {np.mean(head_label == verdict):.3f}, alignment AUROC {align:.3f}, "
              f"share TRUE {verdict.mean():.3f}")


if __name__ == "__main__":
    main()
