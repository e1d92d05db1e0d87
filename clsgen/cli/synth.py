"""`clsgen synth`: a teacher explains each example's gold label; the output is an append-only JSONL."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from .common import add_config_options, add_data_options, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help="teacher-written, label-conditioned explanations (training data for CLSGen)",
        description="Ask a teacher model why each example's gold label is right, accept replies whose last "
                    "line states that label and that read as an explanation, retry the others with "
                    "sampling, and append one record per example to --out. A rerun resumes; examples "
                    "whose every attempt was rejected are kept with explanation null.")
    add_data_options(p)
    p.add_argument("--split", default="train", choices=["train", "validation", "dev", "test"],
                   help="which split to explain (default: train)")
    p.add_argument("--limit", type=int, metavar="N", help="explain only N examples: the first N of a "
                   "seeded shuffle (data.seed), so a larger N extends a smaller one's output")
    p.add_argument("--out", required=True, metavar="JSONL", help="output records (appended; a rerun resumes)")
    t = p.add_argument_group("teacher (also: --set teacher.KEY=VALUE)")
    t.add_argument("--teacher", choices=["local", "openai", "reference"], help="teacher kind (teacher.kind)")
    t.add_argument("--model", dest="teacher_model", help="local model spec (smollm2-135m, a directory, a hub "
                   "id) or the served model name for --teacher openai (teacher.model)")
    t.add_argument("--base-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    t.add_argument("--api-key-env", help="environment variable holding the API key (never the key itself)")
    t.add_argument("--reference-field", help="for --teacher reference: the rationale field (pubmedqa: "
                   "long_answer)")
    t.add_argument("--concurrency", type=int, help="OpenAI-compatible teacher: requests in flight")
    t.add_argument("--max-attempts", type=int, help="tries per example before it is kept with explanation null")
    t.add_argument("--max-new-tokens", type=int, help="longest reply the teacher may write")
    p.add_argument("--shareable", metavar="JSONL", help="also write the accepted explanations with their "
                   "id, label and verdict only (no input text, no rejected replies): a file to ship or share, "
                   "read by experiment.explanations and `clsgen train --explanations`")
    p.add_argument("--force-new", action="store_true", help="when --out holds records made with other teacher "
                   "settings, move that file aside (renamed, not deleted) and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--show-examples", action="store_true", help="add a few sample explanations to the report "
                   "(they hold the data's text: off by default for patient data)")
    add_config_options(p)
    p.set_defaults(func=run)


_FLAGS = {"teacher": "kind", "teacher_model": "model", "base_url": "base_url", "api_key_env": "api_key_env",
          "reference_field": "reference_field", "concurrency": "concurrency", "max_attempts": "max_attempts",
          "max_new_tokens": "max_new_tokens"}


def run(args: argparse.Namespace) -> int:
    from ..datasets import load_dataset
    from ..errors import ClsgenError
    from ..synth import synthesize

    args.overrides = list(args.overrides or [])
    for attr, key in _FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            args.overrides.append(f"teacher.{key}={json.dumps(value)}")
    cfg = config_from_args(args)
    if Path(args.out).is_dir() or not Path(args.out).name:
        raise ClsgenError(f"--out {args.out} is a folder; synth writes one JSONL file: give a file name, e.g. "
                          f"--out {Path(args.out) / 'synth.jsonl'}")
    if args.limit is not None and args.limit < 1:
        raise ClsgenError(f"--limit must be >= 1, got {args.limit}")
    ds = load_dataset(cfg.data, cfg.task)
    examples = ds.split(args.split)
    if args.limit is not None and args.limit < len(examples):
        order = list(range(len(examples)))
        random.Random(cfg.data.seed).shuffle(order)
        examples = [examples[i] for i in sorted(order[: args.limit])]
    if not examples:
        raise ClsgenError(f"split {args.split!r} of {ds.name} has no examples")
    try:
        report = synthesize(examples, ds.task, cfg.teacher, args.out, force_new=args.force_new,
                            n_samples=4 if args.show_examples else 0,
                            progress=not args.no_progress)
    except OSError as e:  # e.g. appending a record on a full disk: name the file; the records are kept
        from ..files import STORAGE_ERRNOS, write_error

        if e.errno not in STORAGE_ERRNOS:
            raise
        raise write_error(e.filename or args.out, e, f"the records already in {args.out} are intact; rerun "
                          "the same command to resume") from None
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else report.format())
    if args.shareable:
        from ..synth.store import read_synth, write_shareable

        n = write_shareable(read_synth(args.out), args.shareable)
        print(f"{n} accepted explanations (id, label, verdict, explanation) -> {args.shareable}")
    return 0
