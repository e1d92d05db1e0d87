"""`clsgen predict`: probability, label and explanation for a text, --field pairs or a file."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from ..errors import ClsgenError
from .model_options import (
    add_model_options,
    add_sampling_options,
    check_model_kind,
    load_predictor,
    model_meta,
    rejection_options,
    repeat_size,
)

MAX_TEXT_CHARS = 100_000


def register(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("predict", help="probability, label and explanation for texts",
                        description="Classify and explain one text, --field pairs, or a JSONL file.")
    pr.add_argument("text", nargs="?", help="the text, for a task with a single text field")
    pr.add_argument("--field", action="append", default=[], metavar="NAME=VALUE",
                    help="a task field (repeat for each field of a multi-field task)")
    pr.add_argument("--input", metavar="FILE", help="a JSONL/CSV/Parquet file with the task's fields (and "
                    "optionally id)")
    pr.add_argument("--max-text-chars", type=int, default=MAX_TEXT_CHARS, metavar="N",
                    help=f"refuse an input whose fields hold more than N characters together (default "
                    f"{MAX_TEXT_CHARS:,}, as the server's --max-text-chars)")
    pr.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    pr.add_argument("--no-explain", action="store_true", help="probability and label only")
    pr.add_argument("--head-verdict", action="store_true", help="head-conditioned decoding: the explanation "
                    "opens with the verdict the probability gives, then argues it (models trained with "
                    "task.verdict_position=first)")
    pr.add_argument("--dataset", default=None, help="with --untrained-head: the built-in dataset whose task "
                    "to use (default clinifact)")
    add_model_options(pr)
    add_sampling_options(pr)
    pr.set_defaults(func=run_predict)


def _parse_fields(pairs: list[str], names: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ClsgenError(f"--field {pair!r} must be NAME=VALUE (fields: {', '.join(names)})")
        if name not in names:
            raise ClsgenError(f"--field {name!r} is not a field of the task; its fields are {', '.join(names)}")
        if name in fields:
            raise ClsgenError(f"--field {name} is given twice; give each field once")
        fields[name] = value
    missing = [n for n in names if n not in fields]
    if missing:
        raise ClsgenError(f"missing --field {missing[0]}=...; the task needs " +
                          " ".join(f"--field {n}=..." for n in names))
    return fields


def _check_text_size(chars: int, args: argparse.Namespace, row: int | None) -> None:
    """Refuse a text longer than --max-text-chars: most of it would be truncated away, after work that
    grows with its length."""
    if chars > args.max_text_chars:
        where = f"{args.input} row {row + 1}: " if row is not None else ""
        raise ClsgenError(f"{where}the text has {chars:,} characters; predict accepts at most "
                          f"{args.max_text_chars:,} (--max-text-chars); shorten it or raise the limit")


def _task_for_predict(args: argparse.Namespace, meta: dict[str, Any] | None):
    from ..datasets import BUILTIN_TASKS
    from ..task import Task

    if meta is not None:
        t = meta["task"]
        return Task(**{**t, "verbalizers": tuple(t["verbalizers"])})
    tasks = BUILTIN_TASKS
    name = args.dataset or "clinifact"
    if name not in tasks:
        raise ClsgenError(f"--dataset {name!r}: with --untrained-head, predict takes the task of a built-in "
                          f"dataset ({', '.join(tasks)})")
    return tasks[name]


def run_predict(args: argparse.Namespace) -> int:
    meta = model_meta(args.model)
    check_model_kind(args, meta)
    task = _task_for_predict(args, meta)
    given = sum(bool(x) for x in (args.text is not None, args.field, args.input))
    if given != 1:
        raise ClsgenError("give exactly one of: a text, --field NAME=VALUE pairs, or --input FILE "
                          f"(task fields: {', '.join(task.fields)})")
    if args.text is not None:
        if len(task.fields) != 1:
            raise ClsgenError(f"task {task.name!r} has fields {', '.join(task.fields)}; a bare text is "
                              "ambiguous: pass " + " ".join(f"--field {n}=..." for n in task.fields))
        items: list[Any] = [{task.fields[0]: args.text}]
    elif args.field:
        items = [_parse_fields(args.field, task.fields)]
    else:
        from ..data import examples_from_rows, read_rows

        items = examples_from_rows(read_rows(args.input), source=args.input, text_fields=task.fields,
                                   label_field=None, require_label=False)
        if not items:
            raise ClsgenError(f"--input {args.input} holds no examples; give a file with one row per text")
    from ..inference import fields_of

    for i, it in enumerate(items):  # fail before the model is loaded on a bad input
        _check_text_size(sum(len(t) for t in fields_of(it, task).values()), args, i if args.input else None)
    predictor = load_predictor(args, task, meta, batch_size=args.batch_size or 8,
                               max_new_tokens=256 if args.max_new_tokens is None else args.max_new_tokens,
                               do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                               seed=args.seed, progress=len(items) > 1, condition_on_head=args.head_verdict,
                               no_repeat_ngram_size=repeat_size(args), **rejection_options(args))
    for it in items:  # a prompt that cannot fit fails before any model work
        predictor.encode(it)
    explain = not args.no_explain
    words = predictor.task.verbalizers
    if len(items) == 1 and not args.json and explain and args.rejection_samples == 1:  # redraws are not streamed
        for event in predictor.stream(items[0]):
            if event.type == "probability":
                print(f"probability {event.probability:.4f}  label {event.label} ({words[event.label]})  "
                      f"threshold {event.threshold:.4g}\n", flush=True)
            elif event.type == "delta":
                print(event.delta, end="", flush=True)
            elif event.prediction is not None:
                print("\n" + verdict_note(event.prediction, words), end="")
        print()
        return 0
    for p in predictor.predict(items, explain=explain):
        if args.json:
            print(json.dumps({**p.to_dict(), "agrees": _agrees(p)}, ensure_ascii=False, allow_nan=False),
                  flush=True)
        else:
            head = f"{p.id + '  ' if p.id else ''}probability {p.probability:.4f}  label {p.label} ({words[p.label]})"
            print(head + (f"\n{p.text}\n{verdict_note(p, words)}\n" if p.text is not None else ""), flush=True)
    return 0


def _agrees(p: Any) -> bool | None:
    """Whether the explanation's stated verdict is the label (None: nothing generated)."""
    return None if p.text is None else p.verdict == p.label


def verdict_note(p: Any, words: Sequence[str]) -> str:
    """One line saying whether the explanation's verdict agrees with the thresholded probability."""
    if p.verdict is None:
        return "note: the explanation states no clear verdict"
    if p.verdict != p.label:
        return (f"warning: the explanation concludes {words[p.verdict]}, but the probability gives "
                f"{words[p.label]}: treat this explanation with caution")
    redrawn = (f" (explanation {p.draws}: the first concluded "
               + (words[p.first_verdict] if p.first_verdict is not None else "nothing") + ")") if p.draws > 1 else ""
    return f"the explanation's verdict ({words[p.verdict]}) agrees with the label{redrawn}"
