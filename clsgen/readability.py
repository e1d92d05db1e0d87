"""Readability of generated explanations, in pure Python (no torch, no model): whether each reads as
prose and is free of repetition loops (`explanation_quality`), and its Flesch reading ease
(`flesch_reading_ease`, `body_flesch`). `clsgen.metrics` reports both with bootstrap intervals; the
teacher's replies are judged with the same rules (`clsgen.synth.build`).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any

import numpy as np

from .errors import UndefinedMetricError
from .verdict import explanation_body

# Readability rules (see `explanation_quality`).
NGRAM_SIZE = 4
"""Length of the word n-grams checked for repetition loops."""
NGRAM_MIN_COUNT = 3
"""An n-gram occurring at least this many times is a repeated n-gram."""
NGRAM_MAX_COVERAGE = 0.5
"""Degenerate when repeated n-grams cover at least this share of the words."""
REPEAT_MIN_WORDS = 8
"""The n-gram and single-word rules apply only to bodies of at least this many words."""
SINGLE_WORD_MAX_SHARE = 0.5
"""Degenerate when one word makes up more than this share of the words."""
WORD_RUN_MAX = 4
"""Degenerate when the same word occurs this many times in a row ("very very very very")."""
SENTENCE_REPEAT_MAX = 3
"""Degenerate when the same sentence or line occurs this many times."""
SENTENCE_MIN_WORDS = 3
"""Sentences shorter than this are not checked for repetition (e.g. list items like "None.")."""
CHAR_LOOP_MAX_UNIT = 8
"""Longest character unit checked for looping without spaces ("hahaha...", "abcabc...")."""
CHAR_LOOP_MIN_REPEATS = 12
"""Degenerate when such a unit (starting with a letter or digit) repeats this many times in a row."""
PROSE_MIN_WORDS = 3
"""Not prose when the body has fewer words than this."""
PROSE_MIN_ALPHA_SHARE = 0.5
"""Not prose when less than this share of the non-space characters are letters."""

_WORD = re.compile(r"\w+")
_ALPHA_WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_FLESCH_SENTENCE_SPLIT = re.compile(r"[.!?]+(?=\s|$)|\n")
_CHAR_LOOP = re.compile(rf"([^\W_].{{0,{CHAR_LOOP_MAX_UNIT - 1}}}?)\1{{{CHAR_LOOP_MIN_REPEATS - 1},}}", re.DOTALL)


def _is_degenerate(body: str) -> bool:
    """Repetition loops; see `explanation_quality` for the rules."""
    words = _WORD.findall(body.casefold())
    if _CHAR_LOOP.search(body):
        return True
    runs = [1]
    for prev, cur in zip(words, words[1:]):
        runs.append(runs[-1] + 1 if cur == prev else 1)
    if max(runs) >= WORD_RUN_MAX:
        return True
    sentences = [" ".join(_WORD.findall(s.casefold())) for s in _SENTENCE_SPLIT.split(body)]
    sentences = [s for s in sentences if len(s.split()) >= SENTENCE_MIN_WORDS]
    if sentences and max(Counter(sentences).values()) >= SENTENCE_REPEAT_MAX:
        return True
    if len(words) < max(REPEAT_MIN_WORDS, NGRAM_SIZE):
        return False
    if max(Counter(words).values()) / len(words) > SINGLE_WORD_MAX_SHARE:
        return True
    grams = [tuple(words[i : i + NGRAM_SIZE]) for i in range(len(words) - NGRAM_SIZE + 1)]
    counts = Counter(grams)
    covered = np.zeros(len(words), dtype=bool)
    for i, gram in enumerate(grams):
        if counts[gram] >= NGRAM_MIN_COUNT:
            covered[i : i + NGRAM_SIZE] = True
    return bool(covered.mean() >= NGRAM_MAX_COVERAGE)


def _is_not_prose(body: str) -> bool:
    words = _ALPHA_WORD.findall(body)
    if len(words) < PROSE_MIN_WORDS:
        return True
    chars = [c for c in body if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) < PROSE_MIN_ALPHA_SHARE


def explanation_quality(text: str | None, verdict: Any) -> dict[str, bool]:
    """Readability flags of one generated explanation.

    `text` is the whole generated text; its body is the text without the verdict line, which comes
    last or first (`clsgen.verdict.explanation_body`). `verdict` is the parsed verdict (label index, or the raw
    verdict line); None means missing. The flags:

    * ``empty``: the body has no visible characters.
    * ``missing_verdict``: `verdict` is None.
    * ``degenerate`` (non-empty bodies only): a repetition loop, i.e. any of
      a unit of up to `CHAR_LOOP_MAX_UNIT` characters starting with a letter or digit repeated
      `CHAR_LOOP_MIN_REPEATS` times in a row ("hahaha..."); the same word `WORD_RUN_MAX` times in a
      row; the same sentence or line (of `SENTENCE_MIN_WORDS`+ words) `SENTENCE_REPEAT_MAX`+ times;
      and, for bodies of `REPEAT_MIN_WORDS`+ words, one word making up more than
      `SINGLE_WORD_MAX_SHARE` of the words, or word `NGRAM_SIZE`-grams occurring
      `NGRAM_MIN_COUNT`+ times covering at least `NGRAM_MAX_COVERAGE` of the words.
    * ``not_prose`` (non-empty bodies only): fewer than `PROSE_MIN_WORDS` words, or fewer than
      `PROSE_MIN_ALPHA_SHARE` of the non-space characters are letters.
    * ``readable``: none of the above.
    """
    body = explanation_body(text or "")
    empty = not body.strip()
    flags = {
        "empty": empty,
        "missing_verdict": verdict is None,
        "degenerate": (not empty) and _is_degenerate(body),
        "not_prose": (not empty) and _is_not_prose(body),
    }
    flags["readable"] = not any(flags.values())
    return flags


@functools.lru_cache(maxsize=1)
def _hyphenator() -> Any:
    import pyphen

    return pyphen.Pyphen(lang="en_US")


@functools.lru_cache(maxsize=65536)
def _syllables(word: str) -> int:
    """Hyphenation points + 1 from the en_US hyphenation dictionary (pyphen), as `textstat` counts
    a word that its pronouncing dictionary lacks."""
    return len(_hyphenator().positions(word.casefold())) + 1


def flesch_reading_ease(text: str) -> float:
    """206.835 - 1.015 * words / sentences - 84.6 * syllables / words.

    Syllables come from the en_US hyphenation dictionary (pyphen, LibreOffice's patterns): the counter
    of `textstat` up to 0.7.3 and its fallback since, so scores compare with published ones. (textstat
    itself is not used: since 0.7.4 it downloads NLTK's CMUdict at first use, which offline fails.)
    Words are runs of letters (with inner apostrophes); sentences are the pieces between '.', '!'
    or '?' followed by a space or the end, or between lines, that contain a word.
    """
    words = _ALPHA_WORD.findall(text or "")
    if not words:
        raise UndefinedMetricError("undefined: no words")
    sentences = sum(1 for s in _FLESCH_SENTENCE_SPLIT.split(text) if _ALPHA_WORD.search(s))
    syllables = sum(_syllables(w) for w in words)
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * syllables / len(words)


def body_flesch(text: str | None) -> float | None:
    body = explanation_body(text or "")
    try:
        return flesch_reading_ease(body)
    except UndefinedMetricError:
        return None
