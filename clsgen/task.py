"""A classification task: instruction, user template, verbalizers, and rendering to token ids.

The prompt is rendered with the tokenizer's chat template (system + user + assistant generation
prompt). Long inputs are truncated *inside* the text fields, so the instruction and the template
always survive. The classification head reads the hidden state at the prompt's last token.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .data import lone_surrogate_at as _bad_unicode
from .data import short_repr
from .errors import ClsgenError
from .verdict import verdict_line

ELLIPSIS = " [...] "
_MAX_REFITS = 6
_REACH_CHARS_PER_TOKEN = 8
"""Characters first read per token a truncated field may keep (doubled until enough tokens)."""
_REACH_MARGIN_TOKENS = 16


@dataclass(frozen=True)
class PromptIds:
    """Token ids of a rendered prompt and where the classification head reads."""

    input_ids: list[int]
    truncated: bool = False

    @property
    def last_index(self) -> int:
        """Index of the last prompt token (end of the assistant generation prompt)."""
        return len(self.input_ids) - 1


@dataclass(frozen=True)
class Task:
    """What to decide and how to ask it."""

    name: str
    system: str
    template: str
    verbalizers: tuple[str, str]
    max_prompt_tokens: int = 768
    truncation: str = "head+tail"
    verdict_position: str = "last"
    """Where the assistant turn states its verdict line: 'last' (after the explanation) or 'first'."""

    def __post_init__(self) -> None:
        if self.truncation not in ("head", "tail", "head+tail"):
            raise ClsgenError(f"task.truncation must be 'head', 'tail' or 'head+tail', "
                              f"got {self.truncation!r}")
        if self.verdict_position not in ("first", "last"):
            raise ClsgenError(f"task.verdict_position must be 'first' or 'last', got {self.verdict_position!r}")
        if len(self.verbalizers) != 2:
            raise ClsgenError(f"task.verbalizers needs two words (label 0, label 1), got "
                              f"{self.verbalizers!r}")
        for what, text in (("task.template", self.template), ("task.system", self.system),
                           *((f"task.verbalizers[{i}]", v) for i, v in enumerate(self.verbalizers))):
            if not isinstance(text, str):
                raise ClsgenError(f"{what} must be text, got {type(text).__name__}")
            if _bad_unicode(text) is not None:
                raise ClsgenError(f"{what} is not valid Unicode text (a lone surrogate at character "
                                  f"{_bad_unicode(text)})")
        try:
            self.fields  # noqa: B018 - parsing the template is the check
        except ValueError as e:
            raise ClsgenError(f"task.template {_short(self.template)} is not a valid template: {e}; "
                              "use {field} for fields and {{ }} for literal braces") from None

    # ------------------------------------------------------------------ text
    @property
    def fields(self) -> list[str]:
        """Field names the template uses, in order of first use."""
        names: list[str] = []
        for _, name, spec, conversion in string.Formatter().parse(self.template):
            if name is not None:
                if not name.isidentifier():
                    raise ValueError(f"field name {_short(name)} must be an identifier")
                if spec or conversion:  # '{x:>9}', '{x!r}': formatting text fields needs neither
                    raise ValueError(f"field {name!r} has a conversion or format spec "
                                     f"({_short(spec or conversion)}); write a plain {{{name}}}")
                if name not in names:
                    names.append(name)
        return names

    def with_overrides(self, **overrides: Any) -> Task:
        """A copy with the non-None overrides applied (e.g. from `TaskConfig`)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "verbalizers" in changes:
            changes["verbalizers"] = tuple(changes["verbalizers"])
        return dataclasses.replace(self, **changes)

    def _field_texts(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """The template's fields as text; a missing field or text no tokenizer takes is a `ClsgenError`."""
        missing = [f for f in self.fields if f not in fields]
        if missing:
            raise ClsgenError(f"the example has no field {missing[0]!r}, which task.template uses; "
                              f"it has {_short(sorted(map(str, fields)), 200)}; map a column to it or change "
                              "task.template")
        texts = {f: str(fields[f]) for f in self.fields}
        for f, text in texts.items():
            bad = _bad_unicode(text)
            if bad is not None:
                raise ClsgenError(f"field {f!r} is not valid Unicode text (a lone surrogate at character {bad})")
        return texts

    def user_message(self, fields: Mapping[str, Any]) -> str:
        return self.template.format_map(self._field_texts(fields))

    def messages(self, fields: Mapping[str, Any]) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user_message(fields)}]

    def target_text(self, explanation: str | None, label: int) -> str:
        """The assistant turn: the explanation and the verdict line (after it, or before it with
        `verdict_position='first'`); the verdict line alone when there is no explanation."""
        line = verdict_line(self.verbalizers[label])
        if not (explanation and explanation.strip()):
            return line
        if self.verdict_position == "first":
            return f"{line}\n\n{explanation.strip()}"
        return f"{explanation.strip()}\n\n{line}"

    def verdict_lines(self, tokenizer: Any, fields: Mapping[str, Any] | None = None) -> tuple[list[int], list[int]]:
        """Token ids opening the assistant turn for label 0 and for label 1: the verdict line up to and
        including its verdict token (the first token where the two differ)."""
        fields = fields if fields is not None else {f: "" for f in self.fields}
        both = [self.encode_target(tokenizer, fields, self.target_text(None, k)) for k in (0, 1)]
        at = next((i for i, (a, b) in enumerate(zip(*both)) if a != b), None)
        if at is None:
            raise ClsgenError(f"the verdict lines of task {self.name!r} tokenize alike for both labels; "
                              "choose verbalizers that differ in their first token")
        return both[0][: at + 1], both[1][: at + 1]

    def opening(self, tokenizer: Any) -> list[int]:
        """Token ids every generating method's turn opens with before it decodes: with the verdict first,
        the verdict prefix ('Answer: '), part of the trained format like the chat template's assistant
        header, after which the model states the verdict and explains; nothing with the verdict last."""
        return self.verdict_lines(tokenizer)[0][:-1] if self.verdict_position == "first" else []

    def parse_verdict(self, text: str | None) -> int | None:
        """The label stated by generated `text` at this task's verdict position (None: none/ambiguous)."""
        from .verdict import parse_verdict

        return parse_verdict(text, self.verbalizers, self.verdict_position)

    def split_verdict(self, text: str | None) -> tuple[str, str | None]:
        """(explanation body, verdict line) of generated `text` at this task's verdict position."""
        from .verdict import split_verdict

        return split_verdict(text, self.verdict_position)

    # ------------------------------------------------------------------ tokens
    def render_prompt(self, tokenizer: Any, fields: Mapping[str, Any]) -> str:
        """The prompt text after the chat template, ending with the assistant generation prompt.

        Control-token strings inside the fields (`<|im_end|>`) are defused first: input text can never
        end the user's turn or open another one."""
        fields = {**fields, **{f: defuse_special_tokens(tokenizer, t) for f, t in self._field_texts(fields).items()}}
        return tokenizer.apply_chat_template(self.messages(fields), add_generation_prompt=True,
                                             tokenize=False)

    def encode_prompt(self, tokenizer: Any, fields: Mapping[str, Any]) -> PromptIds:
        """Prompt token ids within `max_prompt_tokens`, long fields truncated inside."""
        fields = self._within_reach(tokenizer, fields)
        ids = _encode(tokenizer, self.render_prompt(tokenizer, fields))
        if len(ids) <= self.max_prompt_tokens:
            return PromptIds(ids)
        empty = {f: "" for f in self.fields}
        fixed = len(_encode(tokenizer, self.render_prompt(tokenizer, {**fields, **empty})))
        spare = self.max_prompt_tokens - fixed - len(self.fields) * _encoded_len(tokenizer, ELLIPSIS)
        if spare < 1:
            raise ClsgenError(f"task.max_prompt_tokens={self.max_prompt_tokens} is below the prompt's "
                              f"fixed part ({fixed} tokens for the instruction and template); raise it")
        budget = spare
        for _ in range(_MAX_REFITS):
            cut = self.cut_fields(tokenizer, fields, budget)
            ids = _encode(tokenizer, self.render_prompt(tokenizer, {**fields, **cut}))
            if len(ids) <= self.max_prompt_tokens:
                return PromptIds(ids, truncated=True)
            budget -= len(ids) - self.max_prompt_tokens  # merges across the cut changed the count
        raise ClsgenError(f"could not fit the prompt in task.max_prompt_tokens={self.max_prompt_tokens}")

    def _within_reach(self, tokenizer: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
        """`fields` with each very long text reduced to its head and tail, each still longer than any
        truncation keeps (`max_prompt_tokens` plus a margin, in tokens): the prompt is the same, and the
        work no longer grows with the text (a 50 MB field took minutes to tokenize, to be cut anyway)."""
        need = self.max_prompt_tokens + _REACH_MARGIN_TOKENS
        out = dict(fields)
        for f, text in self._field_texts(fields).items():
            width = need * _REACH_CHARS_PER_TOKEN
            while 2 * width < len(text):
                head, tail = text[:width], text[-width:]
                if min(_encoded_len(tokenizer, head), _encoded_len(tokenizer, tail)) >= need:
                    out[f] = head + tail  # the joint lies beyond what truncation keeps of either side
                    break
                width *= 2
        return out

    def cut_fields(self, tokenizer: Any, fields: Mapping[str, Any], budget: int) -> dict[str, str]:
        """The template's fields cut to `budget` tokens in all (this task's truncation side): short
        fields keep everything, long ones share the rest. Also used by teachers, whose prompts carry
        the same fields."""
        field_ids = {f: _encode(tokenizer, defuse_special_tokens(tokenizer, text))
                     for f, text in self._field_texts(fields).items()}
        quotas = _water_fill({f: len(v) for f, v in field_ids.items()}, budget)
        return {f: self._cut(tokenizer, field_ids[f], quotas[f]) for f in self.fields}

    def encode_target(self, tokenizer: Any, fields: Mapping[str, Any], text: str) -> list[int]:
        """Token ids of the assistant turn `text` including the end-of-turn token."""
        messages = self.messages(fields)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}],
                                             tokenize=False)
        eos = tokenizer.eos_token or ""
        if full.startswith(prompt) and text in full[len(prompt):]:
            suffix = full[len(prompt):]
            if eos and eos in suffix:
                suffix = suffix[: suffix.index(eos) + len(eos)]
        else:  # templates that rewrite earlier turns: fall back to text + end of turn
            suffix = text + eos
        return _encode(tokenizer, suffix)

    def _cut(self, tokenizer: Any, ids: list[int], keep: int) -> str:
        if len(ids) <= keep:
            return tokenizer.decode(ids)
        if self.truncation == "head":
            return tokenizer.decode(ids[:keep]) + ELLIPSIS.rstrip()
        if self.truncation == "tail":
            return ELLIPSIS.lstrip() + tokenizer.decode(ids[len(ids) - keep:])
        head = (keep + 1) // 2
        return tokenizer.decode(ids[:head]) + ELLIPSIS + tokenizer.decode(ids[len(ids) - (keep - head):])


def defuse_special_tokens(tokenizer: Any, text: str) -> str:
    """`text` with every control-token string of `tokenizer` (`<|im_end|>`, `<|eot_id|>`) broken by a
    zero-width space, so that it tokenizes as the plain text it is, never as a control token."""
    for special in _special_strings(tokenizer):
        if special in text:
            text = text.replace(special, special[:1] + ZERO_WIDTH_SPACE + special[1:])
    return text


ZERO_WIDTH_SPACE = "\u200b"


def _special_strings(tokenizer: Any) -> tuple[str, ...]:
    cached = getattr(tokenizer, "_clsgen_special_strings", None)
    if cached is None:
        names = set(getattr(tokenizer, "all_special_tokens", ()) or ())
        names |= {str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
                  if getattr(t, "special", False)}
        cached = tuple(sorted((n for n in names if len(n) > 1), key=len, reverse=True))
        try:
            tokenizer._clsgen_special_strings = cached
        except (AttributeError, TypeError):
            pass
    return cached


def _short(value: Any, limit: int = 60) -> str:
    return short_repr(value, limit)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encoded_len(tokenizer: Any, text: str) -> int:
    return len(_encode(tokenizer, text))


def _water_fill(lengths: Mapping[str, int], budget: int) -> dict[str, int]:
    """Share `budget` tokens among fields: short fields keep everything, long ones split the rest
    equally, the odd tokens going to the earlier fields (in `lengths`' order). How much longer than its
    share a long field is plays no part, so a field reduced to what truncation can keep
    (`Task._within_reach`) gets the same quota as the whole field."""
    quotas: dict[str, int] = {}
    left, remaining = max(budget, 0), sorted(lengths, key=lambda f: lengths[f])
    while remaining and lengths[remaining[0]] <= left // len(remaining):
        f = remaining.pop(0)
        quotas[f] = lengths[f]
        left -= lengths[f]
    long = [f for f in lengths if f in remaining]
    share, odd = divmod(left, len(long)) if long else (0, 0)
    for i, f in enumerate(long):
        quotas[f] = share + (i < odd)
    return {f: quotas[f] for f in lengths}


def prompt_lengths(task: Task, tokenizer: Any, examples: Sequence[Any]) -> list[int]:
    """Rendered prompt lengths in tokens (after truncation) for examples with `.fields`."""
    return [len(task.encode_prompt(tokenizer, ex.fields).input_ids) for ex in examples]
