"""The teacher interface: a teacher takes a batch of `Request`s (an example, its attempt number and the
prompt) and returns one `Reply` per request; `TRANSPORT_FAULTS` names what can go wrong on the way.
The teachers themselves are in teachers.py (local HF model, reference field) and openai_teacher.py."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..data import Example
from .prompts import TeacherPrompt

TRANSPORT_FAULTS = ("timeout", "http_429", "http_5xx", "connection", "connection_dropped", "truncated_body",
                    "bad_json", "bad_completion")
"""Request failures that are retried with backoff:

* timeout: no answer within `timeout` (408 too; a reply still arriving after it is cut off);
* http_429: rate limited (waits for Retry-After); http_5xx: a server error (Retry-After honoured);
* connection: the server cannot be reached (refused, unresolvable);
* connection_dropped: the connection closed or reset before a response arrived;
* truncated_body: the response began but its body was cut short (fewer bytes than Content-Length, or
  an unfinished chunked body);
* bad_json: a 200 whose body is not JSON; bad_completion: JSON, but not a chat completion (no
  `choices`, or no text in the message).
"""


@dataclass
class Request:
    """One attempt at one example."""

    example: Example
    attempt: int
    """0 for the first try (greedy), then 1, 2, ... (sampled)."""
    prompt: TeacherPrompt

    @property
    def greedy(self) -> bool:
        return self.attempt == 0

    @property
    def label(self) -> int:
        assert self.example.label is not None
        return self.example.label


@dataclass
class Reply:
    """What a teacher returned for one request."""

    text: str | None
    """The teacher's whole output; None when there is none."""
    tokens: int = 0
    """Tokens generated (as counted by the model or the server)."""
    finish: str = "stop"
    """'stop' (ended by itself), 'length' (cut at max_new_tokens) or 'loop' (stopped in a repetition loop)."""
    seconds: float = 0.0
    """Wall time spent on this request (a share of the batch for batched teachers)."""
    faults: Counter = field(default_factory=Counter)
    """Transport faults met on the way (retried ones included), by kind."""
    error: str | None = None
    """Why there is no text: a transport fault kind after the last retry, or a final reason."""
    final: bool = False
    """True when retrying cannot help (e.g. a missing reference, a request the server rejects)."""


class Teacher(Protocol):
    kind: str
    parallel: int
    batch_size: int

    def settings(self) -> dict[str, Any]:
        """What shapes the outputs (hashed into every record; transport details excluded)."""

    def check(self, examples: Sequence[Example]) -> None:
        """Raise a `ClsgenError` now if the teacher cannot work with these settings."""

    def generate(self, requests: list[Request]) -> list[Reply]:
        """One reply per request, in order."""

    def close(self) -> None: ...


def request_seed(requests: Sequence[Request], base: int) -> int:
    """A seed from the requests' example ids and attempts: the same requests draw the same samples, whatever
    batch or run they are in."""
    key = "|".join(f"{r.example.id}:{r.attempt}" for r in requests)
    return (base * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**31)
