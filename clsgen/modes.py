"""`eval_mode(module)`: run a block with a torch module in eval mode (no dropout), then give it back
the mode it had, so a training loop can score or generate with its own model in between steps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[Any]:
    """Put `module` in eval mode for the block; restore training mode afterwards if it had it."""
    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
