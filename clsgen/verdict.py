"""The verdict line: how an explanation states its own label.

Every explanation (the teacher's and the fine-tuned model's) ends with a line
``Answer: <verbalizer>``, for example ``Answer: TRUE``. This module writes that line and reads it
back, tolerantly, from free-form generated text.

Reading rules (``parse_verdict``):

* The **last** answer marker in the text wins. A marker is ``answer`` followed by a colon anywhere
  in a line (``... so the claim holds. Answer: TRUE``), or at the start of a line, after markdown or
  list decoration, followed by a colon, ``=`` or a dash (``**Answer:** TRUE``, ``> Answer - true``,
  ``2. Final answer: no``). Matching is case-insensitive; ``answering`` is not a marker.
* The stated answer is the rest of that line, cut at the first special token (``<|eot_id|>``,
  ``</s>``, ...). When the rest of the line is empty (``**Answer:**`` then a newline), the next
  non-blank line is used. Whatever follows the verdict line is end-of-text junk and is ignored.
* First an exact match: the answer, trimmed of quotes, brackets and markdown (and then of a trailing
  full stop or other punctuation), equals one verbalizer, case-insensitively. This keeps look-alike
  verbalizers such as ``YES`` and ``YES!`` apart.
* Otherwise a whole-word match: answer and verbalizers are split into lower-case alphanumeric words
  (punctuation ignored), and a verbalizer matches where its words occur as a contiguous run. So
  ``FALSEHOOD`` is not ``FALSE`` and ``untrue`` is not ``TRUE``. An occurrence inside a longer
  verbalizer's occurrence does not count (``no evidence`` beats ``evidence``), nor does one preceded
  by ``not`` (``Answer: not TRUE`` states nothing).
* Exactly one verbalizer must match; none or several (``TRUE or FALSE``) give ``None``.
"""

from __future__ import annotations

import re
from typing import Sequence

VERDICT_PREFIX = "Answer:"

# `answer` + colon anywhere in a line (optionally as `final answer`, optionally in markdown).
_INLINE_MARKER = re.compile(r"(?<!\w)[*_`~]*(?:final[ \t]+)?answer[ \t*_`~]*[:\uff1a]", re.IGNORECASE)
# `answer` at the start of a line, after markdown/list decoration, + colon, `=` or a dash.
_LINE_MARKER = re.compile(
    r"^[ \t>#*_`~|+\u2022\u00b7-]*(?:\d+[.)][ \t]*)?(?:final[ \t]+)?answer[ \t*_`~]*[:\uff1a=\-\u2013\u2014]",
    re.IGNORECASE | re.MULTILINE,
)
# End-of-text / chat special tokens and tags: `<|eot_id|>`, `</s>`, `<end_of_turn>`, `[/INST]`.
_SPECIAL_TOKEN = re.compile(r"<\|[^<>\n]*?\|>|</?[A-Za-z_][\w:.\-]*>|\[/?INST\]")
_WORD = re.compile(r"[^\W_]+")
_TRIM = " \t\r\n*_`~\"'\u201c\u201d\u2018\u2019()[]{}<>"
_NEGATIONS = frozenset({"not"})


def verdict_line(verbalizer: str) -> str:
    """The verdict line that ends an explanation, e.g. ``Answer: TRUE``."""
    return f"{VERDICT_PREFIX} {verbalizer}"


def _last_marker(text: str) -> re.Match[str] | None:
    """The answer marker that ends last in `text` (ties: the one that starts first)."""
    candidates = [m for pattern in (_INLINE_MARKER, _LINE_MARKER) for m in pattern.finditer(text)]
    if not candidates:
        return None
    return max(candidates, key=lambda m: (m.end(), -m.start()))


def _has_words(s: str) -> bool:
    return _WORD.search(s) is not None


def _first_chunk(s: str) -> str:
    """`s` cut at the first special token that follows some content."""
    for chunk in _SPECIAL_TOKEN.split(s):
        if _has_words(chunk):
            return chunk
    return ""


def _answer_text(text: str, marker: re.Match[str]) -> str:
    """What the verdict line states after its marker (or on the next non-blank line)."""
    rest_lines = text[marker.end() :].split("\n")
    answer = _first_chunk(rest_lines[0])
    if answer:
        return answer
    for line in rest_lines[1:]:
        if line.strip():
            return _first_chunk(line)
    return ""


def _normalize(s: str) -> str:
    return " ".join(s.casefold().split())


def _exact_match(answer: str, verbalizers: Sequence[str]) -> int | None:
    """Index of the verbalizer that equals the trimmed answer, if exactly one does."""
    normalized = [_normalize(v) for v in verbalizers]
    core = _normalize(answer.strip(_TRIM))
    for candidate in (core, core.rstrip(".").strip(_TRIM), core.rstrip(".,;:!?").strip(_TRIM)):
        hits = [i for i, v in enumerate(normalized) if v and v == candidate]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            return None
    return None


def _spans(words: list[str], phrase: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) of every contiguous occurrence of `phrase` in `words`."""
    k = len(phrase)
    if k == 0:
        return []
    return [(i, i + k) for i in range(len(words) - k + 1) if tuple(words[i : i + k]) == phrase]


def _word_match(answer: str, verbalizers: Sequence[str]) -> int | None:
    """Index of the one verbalizer stated as whole words in `answer` (see the module docstring)."""
    words = _WORD.findall(answer.casefold())
    phrases = [tuple(_WORD.findall(v.casefold())) for v in verbalizers]
    spans = [_spans(words, phrase) for phrase in phrases]
    matched = []
    for i, own in enumerate(spans):
        others = [s for j, other in enumerate(spans) if j != i for s in other if len(phrases[j]) > len(phrases[i])]
        kept = [
            (a, b)
            for a, b in own
            if not any(oa <= a and b <= ob for oa, ob in others) and not (a > 0 and words[a - 1] in _NEGATIONS)
        ]
        if kept:
            matched.append(i)
    return matched[0] if len(matched) == 1 else None


def parse_verdict(text: str | None, verbalizers: Sequence[str]) -> int | None:
    """The label index (position in `verbalizers`) stated by the last verdict line of `text`.

    Returns None when `text` is None or empty, has no answer marker, or its answer names no
    verbalizer or more than one. See the module docstring for the exact rules.
    """
    if not verbalizers:
        raise ValueError("parse_verdict needs at least one verbalizer, got none")
    if not text:
        return None
    marker = _last_marker(text)
    if marker is None:
        return None
    answer = _answer_text(text, marker)
    if not answer.strip():
        return None
    exact = _exact_match(answer, verbalizers)
    return exact if exact is not None else _word_match(answer, verbalizers)


def split_verdict(text: str | None) -> tuple[str, str | None]:
    """Split generated text into (explanation body, raw verdict line).

    The body is everything before the last answer marker, stripped; the verdict line runs from the
    marker to the end of its line (plus the next non-blank line when the answer is written there),
    stripped. Text after the verdict line is end-of-text junk and belongs to neither. Without a
    marker the whole text is the body and the verdict line is None.
    """
    if not text:
        return "", None
    marker = _last_marker(text)
    if marker is None:
        return text.strip(), None
    body = text[: marker.start()].strip()
    line_end = text.find("\n", marker.end())
    line_end = len(text) if line_end == -1 else line_end
    verdict = text[marker.start() : line_end]
    if not _first_chunk(text[marker.end() : line_end]):
        for line in text[line_end + 1 :].split("\n"):
            if line.strip():
                verdict = f"{verdict.rstrip()}\n{line.strip()}"
                break
    return body, verdict.strip()
