"""Tests for clsgen.verdict: writing and tolerantly reading the `Answer: <verbalizer>` line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clsgen.verdict import VERDICT_PREFIX, parse_verdict, split_verdict, verdict_line

TF = ["FALSE", "TRUE"]
EVIDENCE = ["no evidence", "evidence"]
YES_NO = ["NO", "YES"]


def test_verdict_line_round_trips():
    assert VERDICT_PREFIX == "Answer:"
    assert verdict_line("TRUE") == "Answer: TRUE"
    for verbalizers in (TF, EVIDENCE, YES_NO):
        for label, v in enumerate(verbalizers):
            assert parse_verdict(f"Some reasoning.\n{verdict_line(v)}", verbalizers) == label


@pytest.mark.parametrize(
    "text, verbalizers, expected",
    [
        # plain and formatted verdict lines
        ("The abstract supports it.\nAnswer: TRUE", TF, 1),
        ("The abstract refutes it.\nAnswer: FALSE", TF, 0),
        ("Reasoning.\n**Answer:** TRUE", TF, 1),
        ("Reasoning.\n**Answer**: false", TF, 0),
        ("Reasoning.\nAnswer - true.", TF, 1),
        ('Reasoning.\nanswer: "True"', TF, 1),
        ("Reasoning.\nANSWER: [FALSE]", TF, 0),
        ("Reasoning.\n## Answer: TRUE", TF, 1),
        ("Reasoning.\n> - Answer = FALSE", TF, 0),
        ("Reasoning.\nFinal answer: true!", TF, 1),
        ("The claim holds. Answer: TRUE", TF, 1),
        ("Reasoning.\n**Answer:**\n\nFALSE\n", TF, 0),
        # trailing whitespace, punctuation and end-of-text junk
        ("Reasoning.\nAnswer: TRUE.  \n\n", TF, 1),
        ("Reasoning.\nAnswer: FALSE<|eot_id|>", TF, 0),
        ("Reasoning.\nAnswer: TRUE</s>\n<|im_start|>user\nIs it FALSE?", TF, 1),
        ("Reasoning.\nAnswer: TRUE<|im_end|><|im_start|>user FALSE", TF, 1),
        # the last answer line wins
        ("Answer: TRUE\nOn reflection, no.\nAnswer: FALSE", TF, 0),
        ("Answer: FALSE\nAnswer: TRUE\n", TF, 1),
        # no verdict, or one that names neither / both verbalizers
        ("The claim is TRUE.", TF, None),
        ("Answering this needs care: TRUE", TF, None),
        ("Reasoning.\nAnswer: FALSEHOOD", TF, None),
        ("Reasoning.\nAnswer: untrue", TF, None),
        ("Reasoning.\nAnswer: TRUE or FALSE", TF, None),
        ("Reasoning.\nAnswer:", TF, None),
        ("Reasoning.\nAnswer: maybe", TF, None),
        ("Reasoning.\nAnswer: not TRUE", TF, None),
        ("Reasoning.\nAnswer: TRUE (not FALSE)", TF, 1),
        ("", TF, None),
        (None, TF, None),
        # multi-word verbalizers, one contained in the other: the longer wins when it matches
        ("Reasoning.\nAnswer: no evidence", EVIDENCE, 0),
        ("Reasoning.\nAnswer: **No Evidence.**", EVIDENCE, 0),
        ("Reasoning.\nAnswer: evidence", EVIDENCE, 1),
        ("Reasoning.\nAnswer: Evidence!", EVIDENCE, 1),
        ("Reasoning.\nAnswer: evidence or no evidence", EVIDENCE, None),
        ("Reasoning.\nAnswer: noevidence", EVIDENCE, None),
        # look-alike verbalizers and other wordings
        ("Reasoning.\nAnswer: YES!", ["YES", "YES!"], 1),
        ("Reasoning.\nAnswer: yes", ["YES", "YES!"], 0),
        ("Reasoning.\nAnswer: Yes, the trial shows it.", YES_NO, 1),
        ("Reasoning.\nAnswer: NOPE", YES_NO, None),
        ("Reasoning.\r\nAnswer: no\r\n", YES_NO, 0),
    ],
)
def test_parse_verdict_table(text, verbalizers, expected):
    assert parse_verdict(text, verbalizers) == expected


def test_parse_verdict_needs_verbalizers():
    with pytest.raises(ValueError, match="verbalizer"):
        parse_verdict("Answer: TRUE", [])


@pytest.mark.parametrize(
    "text, body, line",
    [
        ("Because X.\nAnswer: TRUE", "Because X.", "Answer: TRUE"),
        ("Because X.\n\n**Answer:** FALSE\n\n", "Because X.", "**Answer:** FALSE"),
        ("Because X. Answer: TRUE", "Because X.", "Answer: TRUE"),
        ("Answer: TRUE\nThen: Answer: FALSE<|eot_id|>\njunk", "Answer: TRUE\nThen:", "Answer: FALSE<|eot_id|>"),
        ("Because X.\n**Answer:**\nTRUE", "Because X.", "**Answer:**\nTRUE"),
        ("No verdict here.\n", "No verdict here.", None),
        ("", "", None),
    ],
)
def test_split_verdict(text, body, line):
    assert split_verdict(text) == (body, line)


def test_split_verdict_none_text():
    assert split_verdict(None) == ("", None)


_words = st.text(alphabet="abcdefXYZ", min_size=1, max_size=5)
_verbalizer = st.lists(_words, min_size=1, max_size=3).map(" ".join)
_pair = st.tuples(_verbalizer, _verbalizer).filter(lambda vs: vs[0].casefold() != vs[1].casefold())


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.none(), st.text(max_size=300)), verbalizers=_pair)
def test_parse_never_raises(text, verbalizers):
    result = parse_verdict(text, list(verbalizers))
    assert result in (None, 0, 1)
    body, line = split_verdict(text)
    assert isinstance(body, str) and (line is None or isinstance(line, str))


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=300).filter(lambda t: "answer" not in t.casefold()),
    verbalizers=_pair,
    which=st.integers(0, 1),
)
def test_appended_verdict_line_always_parses(text, verbalizers, which):
    full = f"{text}\n{verdict_line(verbalizers[which])}"
    assert parse_verdict(full, list(verbalizers)) == which
    assert split_verdict(full) == (text.strip(), verdict_line(verbalizers[which]))
