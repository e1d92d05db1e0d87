"""Tests for clsgen.collate: encoding prompt + target, padded batches and the batch plan."""

from __future__ import annotations

import pytest
import torch

from clsgen.collate import (
    IGNORE_INDEX,
    Encoded,
    collate_prompts,
    collate_train,
    encode_example,
    pad_left,
    padding_stats,
    plan_epoch,
    prompt_fixed_part,
    training_task,
)
from clsgen.errors import ClsgenError
from clsgen.task import Task

TASK = Task(name="t", system="Decide.", template="Note: {text}", verbalizers=("NO", "YES"))
FIELDS = {"text": "Patients randomised to treatment improved versus placebo."}


@pytest.fixture(scope="module")
def tok():
    from clsgen.backbones import tiny_tokenizer

    return tiny_tokenizer()


def test_encode_prompt_then_target(tok):
    e = encode_example(TASK, tok, FIELDS, 1, "The outcome improved.", max_length=512)
    prompt = TASK.encode_prompt(tok, FIELDS).input_ids
    target = TASK.encode_target(tok, FIELDS, TASK.target_text("The outcome improved.", 1))
    assert e.input_ids == prompt + target
    assert (e.prompt_len, e.target_len, e.label, e.target_cut) == (len(prompt), len(target), 1, False)
    assert tok.decode(e.input_ids[e.prompt_len:]).startswith("The outcome improved.\n\nAnswer: YES")
    assert e.input_ids[-1] == tok.eos_token_id  # the end of turn is learnt too


def test_null_explanation_gets_a_verdict_only_target(tok):
    e = encode_example(TASK, tok, FIELDS, 0, None, max_length=512)
    assert tok.decode(e.input_ids[e.prompt_len:]).strip() == "Answer: NO" and not e.explained
    assert e.input_ids[e.verdict_at] == e.verdict_ids[0] and e.verdict_ids[0] != e.verdict_ids[1]
    assert e.verdict_at == len(e) - 1 and tok.eos_token_id not in e.input_ids[e.prompt_len:]
    assert tok.decode([e.verdict_ids[1]]).strip() == "YES"
    no_target = encode_example(TASK, tok, FIELDS, 0, None, max_length=512, verdict_only=False)
    assert no_target.target_len == 0 and len(no_target) == no_target.prompt_len and no_target.verdict_at == -1
    assert encode_example(TASK, tok, FIELDS, 0, "Why.", 512, with_target=False).target_len == 0


@pytest.mark.parametrize("position", ["first", "last"])
def test_the_verdict_token_is_found_at_either_position(tok, position):
    task = TASK.with_overrides(verdict_position=position)
    e = encode_example(task, tok, FIELDS, 1, "The outcome improved a lot.", max_length=512)
    text = tok.decode(e.input_ids[e.prompt_len:])
    assert e.explained and e.input_ids[e.verdict_at] == e.verdict_ids[1]
    assert text.startswith("Answer: YES\n\nThe outcome") if position == "first" else \
        text.startswith("The outcome improved a lot.\n\nAnswer: YES")
    assert task.parse_verdict(text) == 1 and task.split_verdict(text)[0] == "The outcome improved a lot."
    cut = encode_example(task, tok, FIELDS, 1, "The outcome improved a lot.", max_length=e.verdict_at)
    assert cut.verdict_at == -1  # the verdict was cut off: nothing to teach or tie there


@pytest.mark.parametrize("position", ["first", "last"])
def test_a_verdict_only_row_carries_loss_on_its_verdict_token_alone(tok, position):
    """Neither the end of the turn after the verdict nor the 'Answer:' before it is taught by a row
    without an explanation: most rows have none, and they would teach the model not to explain."""
    task = TASK.with_overrides(verdict_position=position)
    bare = encode_example(task, tok, FIELDS, 1, None, max_length=512)
    explained = encode_example(task, tok, FIELDS, 0, "The outcome improved.", max_length=512)
    labels = collate_train([bare, explained], pad_id=0)["labels"]
    assert (labels[0] != IGNORE_INDEX).nonzero().flatten().tolist() == [bare.verdict_at]
    assert labels[0, bare.verdict_at] == bare.verdict_ids[1] and bare.loss_tokens == 1
    assert bare.verdict_at == len(bare) - 1
    carried = (labels[1] != IGNORE_INDEX).nonzero().flatten().tolist()
    assert carried == list(range(explained.prompt_len, len(explained))) == \
        list(range(explained.loss_start, explained.loss_start + explained.loss_tokens))
    assert explained.input_ids[-1] == tok.eos_token_id


def test_target_is_cut_to_max_length(tok):
    full = encode_example(TASK, tok, FIELDS, 1, "Improved. " * 30, max_length=4096)
    cut = encode_example(TASK, tok, FIELDS, 1, "Improved. " * 30, max_length=full.prompt_len + 5)
    assert len(cut) == full.prompt_len + 5 and cut.target_cut and not full.target_cut
    assert cut.input_ids == full.input_ids[: len(cut)]


def test_max_length_below_the_fixed_part_is_refused(tok):
    need = prompt_fixed_part(TASK, tok)
    with pytest.raises(ClsgenError, match=r"train\.max_length=10 is below the prompt's fixed part"):
        training_task(TASK, tok, 10)
    capped = training_task(TASK, tok, need + 3)
    assert capped.max_prompt_tokens == need + 2
    long = {"text": "No significant difference was observed. " * 50}
    e = encode_example(capped, tok, long, 1, "Because.", max_length=need + 3)
    assert len(e) <= need + 3 and e.prompt_len <= need + 2
    assert training_task(TASK, tok, 4096) is TASK


def test_collate_train_right_pads_and_masks_labels(tok):
    rows = [Encoded([5, 6, 7, 8, 9], 3, 1, 2), Encoded([5, 6], 2, 0, 0), Encoded([4, 4, 4], 2, 1, 1)]
    b = collate_train(rows, pad_id=1, weights=[1, 1, 0])
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 1, 1, 1], [4, 4, 4, 1, 1]]
    assert b["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]
    x = IGNORE_INDEX
    # targets only; a row without a target or with weight 0 carries no LM loss
    assert b["labels"].tolist() == [[x, x, x, 8, 9], [x] * 5, [x] * 5]
    assert b["cls_index"].tolist() == [2, 1, 1]
    assert b["cls_labels"].tolist() == [1.0, 0.0, 1.0] and b["weight"].tolist() == [1.0, 1.0, 0.0]
    assert padding_stats(rows) == (10, 15)


def test_collate_prompts_left_pads():
    b = collate_prompts([[3, 4, 5], [7]], pad_id=0)
    assert b["input_ids"].tolist() == [[3, 4, 5], [0, 0, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b["cls_index"].tolist() == [2, 2]


def test_pad_left_is_the_one_left_padding():
    ids, mask = pad_left([[3, 4, 5], [7], []], pad_id=9)
    assert ids.tolist() == [[3, 4, 5], [9, 9, 7], [9, 9, 9]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]] and mask.dtype == torch.long
    ids, mask = pad_left([(1, 2)], pad_id=0, device="cpu")
    assert ids.device.type == "cpu" and ids.tolist() == [[1, 2]] and mask.tolist() == [[1, 1]]


def test_eval_mode_restores_the_mode_it_found():
    from clsgen.modes import eval_mode

    net = torch.nn.Sequential(torch.nn.Dropout(0.5))
    net.train()
    with eval_mode(net):
        assert not net.training and not net[0].training
    assert net.training and net[0].training
    net.eval()
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("restored on errors too")
    assert not net.training


def _flatten(steps):
    return [i for s in steps for slot in s.micro for mb in slot for i, w in zip(mb.indices, mb.weights) if w]


@pytest.mark.parametrize("group", [True, False])
def test_plan_is_deterministic_and_covers_each_example_once(group):
    lengths = [(i * 37) % 101 + 5 for i in range(50)]
    a = plan_epoch(lengths, 4, 2, 1, seed=3, epoch=0, group_by_length=group)
    assert a == plan_epoch(lengths, 4, 2, 1, seed=3, epoch=0, group_by_length=group)
    assert _flatten(a) != _flatten(plan_epoch(lengths, 4, 2, 1, seed=3, epoch=1, group_by_length=group))
    assert _flatten(a) != _flatten(plan_epoch(lengths, 4, 2, 1, seed=4, epoch=0, group_by_length=group))
    assert sorted(_flatten(a)) == list(range(50))
    assert len(a) == 7  # ceil(50 / (4 * 2))
    assert all(len(s.micro) == 2 and all(len(slot) == 1 for slot in s.micro) for s in a)


def test_length_grouping_limits_padding():
    lengths = [(i * 37) % 301 + 5 for i in range(400)]

    def efficiency(steps):
        real = padded = 0
        for s in steps:
            for slot in s.micro:
                for mb in slot:
                    ls = [lengths[i] for i in mb.indices]
                    real, padded = real + sum(ls), padded + len(ls) * max(ls)
        return real / padded

    grouped = plan_epoch(lengths, 8, 1, 1, seed=0, epoch=0, group_by_length=True)
    shuffled = plan_epoch(lengths, 8, 1, 1, seed=0, epoch=0, group_by_length=False)
    assert efficiency(grouped) > 0.95 > 0.8 > efficiency(shuffled)
    first = grouped[0].micro[0][0].indices  # the longest batch goes first
    assert max(lengths[i] for i in first) == max(lengths)


def test_processes_divide_the_same_global_batches():
    lengths = [(i * 13) % 40 + 3 for i in range(24)]
    one = plan_epoch(lengths, 4, 1, 1, seed=1, epoch=2)
    two = plan_epoch(lengths, 2, 1, 2, seed=1, epoch=2)
    assert len(one) == len(two)
    for s1, s2 in zip(one, two):
        assert sorted(s1.examples()) == sorted(s2.examples())
        assert all(len(slot) == 2 for slot in s2.micro)


def test_ragged_end_gives_weight_zero_fillers():
    steps = plan_epoch([10] * 9, batch_size=2, grad_accum=2, num_processes=2, seed=0, epoch=0)
    assert len(steps) == 2
    last = steps[-1]
    assert len(last.micro) == 2 and all(len(slot) == 2 for slot in last.micro)
    fillers = [mb for slot in last.micro for mb in slot if mb.weights == (0.0,)]
    assert len(fillers) == 3 and len(last.examples()) == 1
    assert sorted(_flatten(steps)) == list(range(9))
    b = collate_train([Encoded([1, 2, 3], 2, 1, 1)], pad_id=0, weights=[0.0])
    assert (b["labels"] == IGNORE_INDEX).all() and b["weight"].tolist() == [0.0]


def test_plan_refuses_empty_data():
    with pytest.raises(ClsgenError, match="no training examples"):
        plan_epoch([], 2, 1, 1, 0, 0)
    assert torch.equal(collate_prompts([[1]], 0)["cls_index"], torch.tensor([0]))
