"""Generation-only baseline: LoRA SFT on explanation + verdict (`train.w_cls = 0`).

Its probability comes from the verdict, as DESIGN.md prescribes: the verbalizers' log-probabilities
where the verdict line is written (the same scoring as the prompting baseline, applied to the
fine-tuned LM). Its explanations are the fine-tuned LM's own greedy generations.
"""

from __future__ import annotations

from pathlib import Path

from ..backbones import Backbone
from .prompting import PromptingClassifier


class GenerationOnlyClassifier(PromptingClassifier):
    """A model trained with `w_cls = 0`, scored by its verdict's log-probabilities.

    scoring: 'prefix' scores the verbalizers right after ``Answer: `` (one forward pass; the default on
    a CPU); 'explanation' scores them after the model's own generated explanation (faithful to how it
    was trained, but it generates for every example).
    """

    name = "generation-only"

    def __init__(self, model_dir: str | Path, batch_size: int = 8, max_new_tokens: int = 256,
                 scoring: str = "prefix", no_repeat_ngram_size: int = 0):
        from ..model import load_pretrained

        model = load_pretrained(model_dir)
        backbone = Backbone(model.lm, model.tokenizer, str(model_dir))
        super().__init__(backbone, model.task, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         scoring=scoring, no_repeat_ngram_size=no_repeat_ngram_size)
