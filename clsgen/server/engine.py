"""The model-side work of the server, run by the batcher's one worker thread: the only code of the
server that calls the `Predictor` (never the model itself)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..batcher import Job
from ..chat import ChatTemplateError
from .errors import ApiError
from .schemas import GREEDY_BELOW


@dataclass
class StreamItem:
    """A streaming job's input and the channel its events travel back on."""

    payload: Any
    queue: asyncio.Queue


CPU_PASS_TOKENS = 512
"""On a CPU, at most this many padded tokens per probability forward pass (rows x longest prompt)."""


def length_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length, longest first, each group's padded size (rows x its longest
    length) at most `max_tokens`; a row longer than that runs alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def push(job: Job, event: Any) -> None:
    """From the worker thread: put an event on the job's asyncio queue."""
    job.emit(job.item.queue.put_nowait, ("event", event))


class Engine:
    """The handlers that the worker thread runs."""

    def __init__(self, predictor: Any):
        self.predictor = predictor
        self.pass_tokens = CPU_PASS_TOKENS if predictor.model.device.type == "cpu" else None

    # ---------------------------------------------------------------- classification
    def proba(self, jobs: Sequence[Job]) -> list[Any]:
        """Probabilities of a micro-batch. On a CPU, rows share a forward pass only up to
        `pass_tokens` padded tokens: one long prompt already keeps the cores busy, so padding several
        into one pass only adds work (docs/benchmarks.md, "Server")."""
        items = [j.item for j in jobs]
        if self.pass_tokens is None or len(items) == 1:
            return list(self.predictor.predict(items, explain=False))
        lengths = [len(self.predictor.encode(it).input_ids) for it in items]
        results: list[Any] = [None] * len(items)
        for group in length_groups(lengths, self.pass_tokens):
            for i, prediction in zip(group, self.predictor.predict([items[i] for i in group], explain=False)):
                results[i] = prediction
        return results

    def predict(self, jobs: Sequence[Job]) -> list[Any]:
        with ExplanationLength(self.predictor, jobs[0].key):
            return list(self.predictor.predict([j.item for j in jobs], explain=True))

    def stream(self, jobs: Sequence[Job]) -> list[Any]:
        (job,) = jobs
        fields, explain, max_tokens = job.item.payload
        with ExplanationLength(self.predictor, max_tokens):
            events = self.predictor.stream(fields, explain=explain)
            try:
                for event in events:
                    push(job, stream_event(event))
                    if job.cancelled.is_set():  # client gone or timed out: stop decoding
                        break
            finally:
                events.close()
        return [None]

    # ---------------------------------------------------------------- chat
    def chat(self, jobs: Sequence[Job]) -> list[Any]:
        """A chat reply as a dict (content, finish_reason, usage); a streaming job also gets each new
        piece of text as an event."""
        (job,) = jobs
        streaming = isinstance(job.item, StreamItem)
        req = job.item.payload if streaming else job.item
        try:
            reply = self.predictor.chat(
                req["messages"], req["max_tokens"], do_sample=req["temperature"] >= GREEDY_BELOW,
                temperature=req["temperature"], top_p=req["top_p"], stop=req["stop"], seed=req["seed"],
                on_text=(lambda text: push(job, text)) if streaming else None, cancelled=job.cancelled.is_set)
        except ChatTemplateError as e:  # many templates raise on roles that do not alternate
            raise ApiError(422, str(e), param="messages", code="invalid_messages") from None
        return [reply.to_dict()]


class ExplanationLength:
    """Temporarily set the predictor's explanation length (only the worker thread uses it)."""

    def __init__(self, predictor: Any, max_new_tokens: int | None):
        self.predictor, self.value = predictor, max_new_tokens

    def __enter__(self) -> None:
        self.saved = getattr(self.predictor, "max_new_tokens", None)
        if self.value is not None and self.saved is not None:
            self.predictor.max_new_tokens = self.value

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            self.predictor.max_new_tokens = self.saved


def stream_event(event: Any) -> tuple[str, Any]:
    """A `StreamEvent` as (kind, payload): ("first", event), ("delta", text) or ("final", Prediction)."""
    if event.type == "done":
        return "final", event.prediction
    if event.type == "delta":
        return "delta", event.delta or ""
    return "first", event
