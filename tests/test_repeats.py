"""clsgen.repeats: the no-repeated-n-gram rule, alone, in the Predictor's loop and as a logits processor."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from clsgen.backbones import tiny_model
from clsgen.errors import ClsgenError
from clsgen.inference import Predictor
from clsgen.model import DualHeadModel
from clsgen.repeats import NoRepeatGeneratedNGrams, banned_tokens, block_repeats
from clsgen.task import Task

TASK = Task(name="toy", system="Decide.", template="Claim: {claim}", verbalizers=("FALSE", "TRUE"))


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def test_banned_tokens_are_those_that_would_complete_a_seen_ngram():
    assert banned_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_tokens([1, 2, 3, 1, 2, 4, 1, 2], 3) == {3, 4}
    assert banned_tokens([5, 5], 2) == {5}
    assert banned_tokens([1, 2, 3], 3) == set()  # the prefix (2, 3) has not occurred before
    assert banned_tokens([1, 1, 1], 0) == set() and banned_tokens([1], 2) == set()


def test_block_repeats_masks_only_the_banned_tokens_and_leaves_its_input_alone():
    logits = torch.zeros(2, 6)
    out = block_repeats(logits, [[1, 2, 3, 1, 2], [4, 5]], 3)
    assert out[0, 3] == float("-inf") and torch.isfinite(out[0, [0, 1, 2, 4, 5]]).all()
    assert torch.isfinite(out[1]).all() and torch.isfinite(logits).all()
    assert block_repeats(logits, [[1], [2]], 3) is logits


@pytest.fixture(scope="module")
def model() -> DualHeadModel:
    return DualHeadModel.from_backbone(tiny_model(), TASK).eval()  # fresh: greedy repeats one token


def test_the_predictor_never_repeats_an_ngram_and_matches_generate_with_the_processor(model):
    item = {"claim": "patients improved"}
    free = Predictor(model, max_new_tokens=20, stop_token_ids=[]).predict([item])[0].token_ids
    assert len(set(ngrams(free, 3))) < len(ngrams(free, 3))  # the untrained model loops
    blocked = Predictor(model, max_new_tokens=20, stop_token_ids=[], no_repeat_ngram_size=3).predict([item])[0]
    assert len(set(ngrams(blocked.token_ids, 3))) == len(ngrams(blocked.token_ids, 3))
    ids = torch.tensor([TASK.encode_prompt(model.tokenizer, item).input_ids])
    with torch.no_grad():
        out = model.causal_lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                                       eos_token_id=None, pad_token_id=model.tokenizer.pad_token_id,
                                       logits_processor=LogitsProcessorList([NoRepeatGeneratedNGrams(3, ids.shape[1])]))
    assert blocked.token_ids == out[0, ids.shape[1]:].tolist()


def test_a_block_of_one_token_is_refused(model):
    with pytest.raises(ClsgenError, match="no_repeat_ngram_size must be 0 \\(off\\) or >= 2, got 1"):
        Predictor(model, no_repeat_ngram_size=1)
