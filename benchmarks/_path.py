"""Imported first by every benchmark script: puts this checkout's root (and this folder) at the front of
sys.path, so that `clsgen` is this repository's package and `common` this folder's module, whichever
clsgen is installed."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
"""This folder (benchmarks/)."""
ROOT = HERE.parent
"""The repository root."""

for _path in (str(HERE), str(ROOT)):  # ROOT ends up first, then HERE
    sys.path.insert(0, _path)
