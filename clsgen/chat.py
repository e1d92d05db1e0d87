"""Chat with the fine-tuned LM (adapter on): the chat template, HF `generate` with stop strings, and text
deltas as they are decoded. `Predictor.chat` runs it; the server only passes messages in and text out.

A reply ends at the model's end of turn (its stop token ids), at the first of the caller's stop
strings (never sent), at `max_new_tokens`, or when `cancelled()` turns true. While decoding, the text
that could still become a stop string is held back, and so is a half-decoded character.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ClsgenError
from .modes import eval_mode

if TYPE_CHECKING:
    from .inference import Predictor


class ChatTemplateError(ClsgenError):
    """The model's chat template refused the messages (roles that do not alternate, a system message)."""


@dataclass
class ChatReply:
    """A finished chat reply and its token counts (OpenAI's `usage`)."""

    content: str
    finish_reason: str
    """stop (end of turn or a stop string) or length (`max_new_tokens`)."""
    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict[str, Any]:
        """The reply as the chat endpoint's worker hands it over: content, finish_reason and usage."""
        return {"content": self.content, "finish_reason": self.finish_reason,
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                          "total_tokens": self.prompt_tokens + self.completion_tokens}}


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat prompt. Control-token strings in a message (`<|im_end|>`) are defused as in the
    classify fields, so no message can close its turn or forge another one; ChatTemplateError when
    the model's chat template refuses the messages."""
    from jinja2.exceptions import TemplateError

    from .task import defuse_special_tokens

    messages = [{**m, "content": defuse_special_tokens(tokenizer, m["content"])} for m in messages]
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as e:
        raise ChatTemplateError(f"this model's chat template refuses these messages: {e}") from None


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of the stop strings starts in `text` (None: none occurs)."""
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop string (not sent yet)."""
    held = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                held = max(held, k)
                break
    return held


def chat(predictor: Predictor, messages: list[dict[str, str]], max_new_tokens: int, *, do_sample: bool = False,
         temperature: float = 1.0, top_p: float = 1.0, stop: Sequence[str] = (), seed: int | None = None,
         on_text: Callable[[str], None] | None = None,
         cancelled: Callable[[], bool] | None = None) -> ChatReply:
    """One assistant reply to `messages` from the predictor's model; `on_text` gets each new piece of
    visible text as it is decoded (the pieces join to the reply's content)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    model, tok = predictor.model, predictor.tokenizer
    text = render_chat(tok, messages)
    ids = {k: v.to(model.device) for k, v in tok(text, return_tensors="pt", add_special_tokens=False).items()}
    prompt_len = ids["input_ids"].shape[1]
    context = getattr(model.causal_lm.config, "max_position_embeddings", None)
    if context and prompt_len + max_new_tokens > context:
        raise ClsgenError(f"the messages take {prompt_len} tokens; with max_tokens={max_new_tokens} that "
                          f"exceeds the model's context of {context} tokens; shorten the messages")
    stops = list(stop)
    state = {"ids": [], "sent": 0, "stopped": False}
    eos = set(predictor.stop_token_ids)  # eos and the template's end-of-turn tokens

    def visible() -> str:
        return tok.decode([t for t in state["ids"] if t not in eos], skip_special_tokens=True)

    class _Watch(StoppingCriteria):
        """Collects new tokens, passes on text deltas, stops on a stop string or when cancelled."""

        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            state["ids"] = input_ids[0, prompt_len:].tolist()
            current = visible()
            cut = first_stop(current, stops)
            if cut is not None:
                current, state["stopped"] = current[:cut], True
            upto = len(current) - (held_back(current, stops) if cut is None else 0)
            if on_text is not None and upto > state["sent"] and not current[:upto].endswith("\ufffd"):
                on_text(current[state["sent"]:upto])
                state["sent"] = upto
            done = state["stopped"] or (cancelled is not None and cancelled())
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    gen_kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos) or None,
                                  stopping_criteria=StoppingCriteriaList([_Watch()]))
    if do_sample:
        gen_kw.update(temperature=temperature, top_p=top_p, top_k=0)
        if seed is not None:
            torch.manual_seed(seed)
    else:
        gen_kw.update(temperature=None, top_p=None, top_k=None)
    with eval_mode(model), torch.inference_mode():  # eval: no LoRA dropout
        out = model.lm.generate(**ids, **gen_kw)
    new = out[0, prompt_len:].tolist()
    state["ids"] = new
    content = visible()
    cut = first_stop(content, stops)
    if cut is not None:
        content, state["stopped"] = content[:cut], True
    ended_eos = bool(new) and new[-1] in eos
    if on_text is not None and len(content) > state["sent"]:
        on_text(content[state["sent"]:])
    return ChatReply(content=content, finish_reason="stop" if (state["stopped"] or ended_eos) else "length",
                     prompt_tokens=prompt_len,
                     completion_tokens=len([t for t in new if t not in eos]) + (1 if ended_eos else 0))
