"""Run every benchmark in this folder and write docs/benchmarks.md and docs/benchmarks.json.

    python benchmarks/run_all.py            # the full run (< 30 minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick    # a smoke run with small sizes
    python benchmarks/run_all.py --only hardware training
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from _path import HERE  # first: this checkout's clsgen on sys.path

# isort: split

from common import machine  # noqa: E402

# In the order they run and appear in the document.
BENCHMARKS = ["hardware", "training", "inference", "scoring", "server", "synth"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", choices=BENCHMARKS)
    p.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    args = p.parse_args()

    from clsgen.files import atomic_write_text

    names = args.only or BENCHMARKS
    started = time.perf_counter()
    info = machine()
    sections = []
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        section = importlib.import_module(name).run(quick=args.quick)
        section.seconds = time.perf_counter() - t0
        print(section.render(), flush=True)
        sections.append((name, section))
    total = time.perf_counter() - started

    command = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    date = f"{datetime.now(timezone.utc):%Y-%m-%d}"
    out = Path(args.out)
    ran = {name: {"title": s.title, "rendered": s.render(), "figures": s.figures, "seconds": s.seconds,
                  "command": command, "date": date,
                  "targets": [{"name": t.name, "ratio": t.ratio, "bound": t.bound, "met": t.met} for t in s.targets]}
           for name, s in sections}
    kept = _earlier_sections(out, set(ran)) if args.only else {}
    entries = {n: ran.get(n) or kept[n] for n in BENCHMARKS if n in ran or n in kept}
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {date} in {total / 60:.1f} minutes"
        + ("; the other sections are kept from " + ", ".join(sorted({f"`{e['command']}` ({e['date']})"
                                                                      for e in kept.values()})) if kept else "")
        + ".",
        "Every comparison runs both sides in one process, alternately, and reports medians of repeated",
        "runs; ratios are what to read (absolute figures move with the machine's load).",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if v is not None) + ".",
        "",
        "## Targets",
        "",
        "| benchmark | target | ratio | bound | |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {e['title']} | {t['name']} | {t['ratio']:.3f} | {t['bound']} | {'met' if t['met'] else 'missed'} |"
              for e in entries.values() for t in e["targets"]]
    lines.append("")
    body = "\n".join(lines) + "\n" + "\n".join(e["rendered"] for e in entries.values())
    atomic_write_text(out, body)
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"command": command, "machine": info, "minutes": total / 60, "benchmarks": entries}, indent=2, default=str))
    print(f"wrote {out} ({total / 60:.1f} minutes)")


def _earlier_sections(out: Path, ran: set[str]) -> dict[str, dict]:
    """The sections an `--only` run did not run, as the last run wrote them (never dropped)."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    text = out.read_text() if out.is_file() else ""
    blocks = ["## " + b.rstrip() + "\n" for b in text.split("\n## ")[1:] if not b.startswith("Targets\n")]
    kept = {}
    for i, (name, entry) in enumerate(old.get("benchmarks", {}).items()):
        rendered = entry.get("rendered") or (blocks[i] if i < len(blocks) else None)  # older files: by order
        if name in ran or rendered is None:
            continue
        title = entry.get("title") or rendered.splitlines()[0].removeprefix("## ")
        kept[name] = {**entry, "title": title, "rendered": rendered,
                      "command": entry.get("command") or old.get("command", "?"), "date": entry.get("date", "earlier")}
    return kept


if __name__ == "__main__":
    main()
