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
from collections.abc import Sequence
from dataclasses import dataclass

VERDICT_PREFIX = "Answer:"

# `answer` + colon anywhere in a line (optionally as `final answer`, optionally in markdown), as
# `(?<!\w)[*_`~]*(?:final[ \t]+)?answer[ \t*_`~]*[:\uff1a]`. That regex takes quadratic time on a long
# run of `*` (each start in the run rescans it), so the core is matched here and its decoration and
# `final` are found by `_inline_markers`, in linear time.
_INLINE_CORE = re.compile(r"answer[ \t*_`~]*[:\uff1a]", re.IGNORECASE)
_FINAL = re.compile(r"final", re.IGNORECASE)
_DECORATION = frozenset("*_`~")
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


@dataclass(frozen=True)
class _Marker:
    """Where an answer marker starts and ends in the text."""

    start: int
    end: int


def _decorated_start(text: str, at: int) -> int | None:
    """The leftmost start of `[*_`~]*` + text[at:] that is not preceded by a word character, if any."""
    first = at
    while first > 0 and text[first - 1] in _DECORATION:
        first -= 1
    for start in range(first, at + 1):
        if start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            return start
    return None


def _inline_markers(text: str) -> list[_Marker]:
    """Every `answer:` marker anywhere in a line, with its decoration and `final`."""
    out = []
    for m in _INLINE_CORE.finditer(text):
        start = None
        gap = m.start()
        while gap > 0 and text[gap - 1] in " \t":
            gap -= 1
        if gap < m.start() and gap >= 5 and _FINAL.fullmatch(text, gap - 5, gap):
            start = _decorated_start(text, gap - 5)
        if start is None:
            start = _decorated_start(text, m.start())
        if start is not None:
            out.append(_Marker(start, m.end()))
    return out


def _last_marker(text: str) -> _Marker | None:
    """The answer marker that ends last in `text` (ties: the one that starts first)."""
    candidates = _inline_markers(text) + [_Marker(m.start(), m.end()) for m in _LINE_MARKER.finditer(text)]
    if not candidates:
        return None
    return max(candidates, key=lambda m: (m.end, -m.start))


def _first_marker(text: str) -> _Marker | None:
    """The answer marker that starts first in `text` (ties: the longer one)."""
    candidates = _inline_markers(text) + [_Marker(m.start(), m.end()) for m in _LINE_MARKER.finditer(text)]
    if not candidates:
        return None
    return min(candidates, key=lambda m: (m.start, -m.end))


def _marker(text: str, position: str) -> _Marker | None:
    if position == "first":
        return _first_marker(text)
    if position == "last":
        return _last_marker(text)
    raise ValueError(f"verdict position must be 'first' or 'last', got {position!r}")


def _has_words(s: str) -> bool:
    return _WORD.search(s) is not None


def _first_chunk(s: str) -> str:
    """`s` cut at the first special token that follows some content."""
    for chunk in _SPECIAL_TOKEN.split(s):
        if _has_words(chunk):
            return chunk
    return ""


def _answer_text(text: str, marker: _Marker) -> str:
    """What the verdict line states after its marker (or on the next non-blank line)."""
    rest_lines = text[marker.end :].split("\n")
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
        # Starts of the longer verbalizers' occurrences, by length: (a, b) lies inside an occurrence of
        # length k when one starts in [b - k, a]. (Comparing every pair was quadratic on long answers.)
        longer = [(len(phrases[j]), {oa for oa, _ in spans[j]}) for j in range(len(spans))
                  if j != i and len(phrases[j]) > len(phrases[i]) and spans[j]]

        def inside(a: int, b: int, longer=longer) -> bool:
            return any(oa in starts for k, starts in longer for oa in range(max(b - k, 0), a + 1))

        kept = [(a, b) for a, b in own if not inside(a, b) and not (a > 0 and words[a - 1] in _NEGATIONS)]
        if kept:
            matched.append(i)
    return matched[0] if len(matched) == 1 else None


def parse_verdict(text: str | None, verbalizers: Sequence[str], position: str = "last") -> int | None:
    """The label index (position in `verbalizers`) stated by the last verdict line of `text` (the
    first one with `position='first'`, for models trained to state the verdict before explaining).

    Returns None when `text` is None or empty, has no answer marker, or its answer names no
    verbalizer or more than one. See the module docstring for the exact rules.
    """
    if not verbalizers:
        raise ValueError("parse_verdict needs at least one verbalizer, got none")
    if not text:
        return None
    marker = _marker(text, position)
    if marker is None:
        return None
    answer = _answer_text(text, marker)
    if not answer.strip():
        return None
    exact = _exact_match(answer, verbalizers)
    return exact if exact is not None else _word_match(answer, verbalizers)


def split_verdict(text: str | None, position: str = "last") -> tuple[str, str | None]:
    """Split generated text into (explanation body, raw verdict line).

    The body is everything before the last answer marker, stripped; the verdict line runs from the
    marker to the end of its line (plus the next non-blank line when the answer is written there),
    stripped. Text after the verdict line is end-of-text junk and belongs to neither. Without a
    marker the whole text is the body and the verdict line is None. With `position='first'` the
    verdict line is the first one and the body is what follows it.
    """
    if not text:
        return "", None
    marker = _marker(text, position)
    if marker is None:
        return text.strip(), None
    line_end = text.find("\n", marker.end)
    line_end = len(text) if line_end == -1 else line_end
    verdict = text[marker.start : line_end]
    rest = line_end + 1
    if not _first_chunk(text[marker.end : line_end]):
        for line in text[line_end + 1 :].split("\n"):
            rest += len(line) + 1
            if line.strip():
                verdict = f"{verdict.rstrip()}\n{line.strip()}"
                break
    if position == "first":
        return _strip_special(text[min(rest, len(text)):]).strip(), verdict.strip()
    return text[: marker.start].strip(), verdict.strip()


def explanation_body(text: str | None) -> str:
    """The explanation without its verdict line, whether the line comes last or first."""
    body, line = split_verdict(text, "last")
    if line is not None and not body:
        body, _ = split_verdict(text, "first")
    return body


def _strip_special(s: str) -> str:
    """`s` up to its first special token (an end of turn), if any."""
    return _SPECIAL_TOKEN.split(s, maxsplit=1)[0]
