"""Options shared by several commands, and how they become a `Config`."""

from __future__ import annotations

import argparse

from ..config import Config, load_config
from ..errors import ClsgenError


def add_config_options(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """--config / --set; with `positional`, also `CONFIG.yaml key=value ...` as plain arguments."""
    if positional:
        parser.add_argument("settings", nargs="*", metavar="[CONFIG.yaml] [KEY=VALUE ...]",
                            help="a YAML config file and/or settings, e.g. `run.yaml learning_rate=1e-4` "
                            "(the same as --config run.yaml --set learning_rate=1e-4)")
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="YAML", help="a YAML config file (sections: model, lora, task, "
                   "data, train, teacher, eval)")
    g.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one setting, e.g. --set train.lr=1e-4 or --set learning_rate=1e-4 "
                   "(repeatable; docs/training.md lists the familiar names accepted)")


def add_data_options(parser: argparse.ArgumentParser, dataset_positional: bool = False) -> None:
    if dataset_positional:
        parser.add_argument("dataset", nargs="?", help="built-in dataset (clinifact, pubmedqa, lcd) or a "
                            "JSONL/CSV/Parquet file or folder")
    else:
        parser.add_argument("--dataset", help="built-in dataset (clinifact, pubmedqa, lcd) or a data file")
    parser.add_argument("--data-dir", help="folder holding built-in datasets (default: CLSGEN_DATA_DIR, "
                        "then the user cache, then download)")
    parser.add_argument("--split-scheme", choices=["official", "trial-disjoint"], dest="split_scheme",
                        help="official splits or a re-split with no trial shared between splits")
    parser.add_argument("--binarization", help="built-in label mapping (clinifact: evidence-vs-rest, "
                        "evidence-vs-inconclusive)")


def add_model_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--model", help=help or "base model: smollm2-135m (embedded default), a local "
                        "directory or a hub id")


def split_settings(args: argparse.Namespace) -> None:
    """Move positional `CONFIG.yaml key=value ...` into args.config and args.overrides (in place)."""
    settings = list(getattr(args, "settings", None) or [])
    files = [s for s in settings if "=" not in s]
    if len(files) > 1 or (files and getattr(args, "config", None)):
        given = files + ([f"--config {args.config}"] if getattr(args, "config", None) else [])
        raise ClsgenError(f"more than one config file given ({', '.join(given)}); pass one, and settings "
                          "as key=value")
    if files:
        args.config = files[0]
    args.overrides = [s for s in settings if "=" in s] + list(getattr(args, "overrides", []) or [])
    args.settings = []


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file, then key=value settings and --set overrides, then the dedicated flags (the most
    specific wins)."""
    split_settings(args)
    overrides = list(getattr(args, "overrides", []) or [])
    flag_map = {
        "dataset": "data.dataset", "data_dir": "data.data_dir", "split_scheme": "data.split",
        "binarization": "data.binarization", "model": "model.name",
    }
    for attr, key in flag_map.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={_yaml_scalar(value)}")
    return load_config(getattr(args, "config", None), overrides)


def _yaml_scalar(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
