"""Options shared by several commands, and how they become a `Config`."""

from __future__ import annotations

import argparse

from ..config import Config, load_config


def add_config_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="YAML", help="a YAML config file (sections: model, lora, task, "
                   "data, train, teacher, eval)")
    g.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one setting, e.g. --set train.lr=1e-4 (repeatable)")


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


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file, then --set overrides, then the dedicated flags (the most specific wins)."""
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
