"""Optional parts of clsgen and the pip extra that installs each: a missing one is a clear error.

`pip install clsgen` installs what training, evaluation and inference need; the HTTP server
(`clsgen[serve]`: fastapi, uvicorn) and the report's plots (`clsgen[report]`: matplotlib) are extras.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ClsgenError

EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "starlette": "serve", "pydantic": "serve",
          "matplotlib": "report"}
"""Top-level module -> the extra that installs it."""


def require(module: str, needed_for: str) -> ModuleType:
    """Import `module`, or raise a `ClsgenError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing(module, needed_for) from None


def missing(module: str, needed_for: str) -> ClsgenError:
    """The error for a missing optional dependency `module` (e.g. 'fastapi')."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    fix = f"pip install 'clsgen[{extra}]'" if extra else f"pip install {top}"
    return ClsgenError(f"{needed_for} needs {top}, which is not installed: {fix}")
