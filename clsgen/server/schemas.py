"""The request and response bodies of the HTTP API (pydantic models, shown in /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from .errors import ApiError, json_kind

GREEDY_BELOW = 1e-5
"""A chat temperature below this decodes greedily (as vLLM does): dividing the logits by a tinier one
overflows to inf and sampling fails."""
SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds torch's generator takes."""


class ClassifyRequest(BaseModel):
    """Classify one input: `text` (for a task with one field) or `fields` (one entry per task field)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "Patient admitted with ...", "explain": True},
        {"fields": {"claim": "Drug X lowers HbA1c.", "article_abstract": "..."}, "stream": True},
    ]})
    text: str | None = Field(None, description="The input text, for a task whose template has one field.")
    fields: dict[str, str] | None = Field(None, description="The task's fields by name (see GET /v1/task).")
    explain: StrictBool = Field(True, description="Generate the explanation (false: probability only, fast).")
    stream: StrictBool = Field(False, description="Answer with server-sent events: `probability` first, then "
                         "`delta` events with explanation text, then `done` with the full result.")
    max_tokens: int | None = Field(None, ge=1, description="Explanation length limit in tokens (default: "
                                   "the server's --explain-tokens; capped by its --max-tokens).")
    model: str | None = Field(None, description="Optional; must name the served model when given.")


class ClassifyResponse(BaseModel):
    id: str
    model: str
    probability: float = Field(description="P(label 1) from the classification head (calibrated).")
    label: int = Field(description="1 when probability >= threshold, else 0.")
    label_name: str = Field(description="The task's verbalizer for `label`.")
    threshold: float
    explanation: str | None = Field(description="The explanation without its verdict line (null when "
                                    "explain is false).")
    verdict: int | None = Field(description="The label the explanation states in its verdict line "
                                "(null when missing, ambiguous, or explain is false).")
    truncated: bool = Field(description="Whether a long field was cut to fit the model's prompt limit.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """OpenAI chat completions; unknown OpenAI parameters are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description=f"0 (or below {GREEDY_BELOW:g}): greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])


def message_text(message: ChatMessage) -> str:
    """A chat message's text: a string, or OpenAI content parts of type 'text' joined."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise ApiError(422, f"message content parts must be of type 'text' (this model reads text "
                           f"only), got {part.get('type')!r}", param="messages")
        if not isinstance(part.get("text"), str):
            raise ApiError(422, "a message content part of type 'text' needs a string 'text', got "
                           f"{json_kind(part.get('text'))}", param="messages")
        texts.append(part["text"])
    return "\n".join(texts)
