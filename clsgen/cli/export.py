"""`clsgen export --merge`: a merged full model + head that loads without PEFT."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write a merged full model + head that loads without PEFT")
    e.add_argument("--merge", required=True, metavar="MODEL_DIR", help="a model saved by clsgen train")
    e.add_argument("--out", required=True, metavar="DIR", help="where to write the merged model: a new or "
                   "empty folder (never the source model)")
    e.add_argument("--overwrite", action="store_true", help="replace a merged model that clsgen wrote at "
                   "--out before (a folder holding clsgen.json and only the files an export writes)")
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights (default: the model's)")
    e.add_argument("--base-model", metavar="SPEC", help="the base model, instead of the one clsgen.json names")
    e.add_argument("--trust-remote-code", action="store_true", help="let the base model's own Python code "
                   "run; off by default")
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..files import atomic_dir, check_output_dir
    from ..model import load_pretrained
    from ..model_io import META_FILE, read_meta

    sources = [args.merge] + ([args.base_model] if args.base_model and Path(args.base_model).exists() else [])
    out = check_output_dir(args.out, META_FILE, overwrite=args.overwrite, sources=sources)
    if read_meta(args.merge).get("merged"):
        print(f"{args.merge} is already merged; nothing to do")
        return 0
    model = load_pretrained(args.merge, dtype=args.dtype, base_model=args.base_model,
                            trust_remote_code=args.trust_remote_code)
    with atomic_dir(out, check=lambda new: _replaces_only_model_files(out, new)) as tmp:
        model.export_merged(tmp)
    print(f"merged model + head written to {args.out} (loads with clsgen, no PEFT needed)")
    return 0


def _replaces_only_model_files(out: Path, new: Path) -> None:
    """Refuse to replace a clsgen folder that also holds files the export does not write (a user's own)."""
    import os

    from ..errors import ClsgenError
    from ..files import foreign_entries

    foreign = foreign_entries(out, os.listdir(new))
    if foreign:
        raise ClsgenError(f"--out {out} holds {', '.join(foreign[:5])}, which an export does not write; "
                          "clsgen replaces only what it wrote: move them away or choose another --out")
