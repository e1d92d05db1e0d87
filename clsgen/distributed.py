"""How a run is shared among processes by `accelerate`: one process, DDP (whole parameters on every
process), or FSDP / DeepSpeed (sharded parameters).

`configure_launcher` makes the launcher's settings agree with `train.*`, `plain_parallel` tells
whether every process holds whole parameters, `check_in_sync` checks that DDP processes end with the
same weights, and `release` frees accelerate's state after a run (training, or sending an evaluation
to the trackers) so that the next one in the same process starts clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import ClsgenError


def configure_launcher(accelerator: Any, tc: Any) -> None:
    """Make the launcher's settings agree with train.*: the batch plan is clsgen's, not accelerate's."""
    from accelerate.utils import DistributedType

    if accelerator.gradient_accumulation_steps != tc.grad_accum:
        raise ClsgenError(f"the launcher sets gradient accumulation to "
                          f"{accelerator.gradient_accumulation_steps} but train.grad_accum is {tc.grad_accum}; "
                          "set train.grad_accum and leave the launcher's value unset ('auto' for DeepSpeed)")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        for key, value in (("train_micro_batch_size_per_gpu", tc.batch_size),
                           ("gradient_clipping", tc.max_grad_norm)):
            if ds.get(key, "auto") == "auto":
                ds[key] = value


def plain_parallel(accelerator: Any) -> bool:
    """One process or DDP: every process holds whole parameters (no FSDP / DeepSpeed sharding)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def check_in_sync(accelerator: Any, params: Sequence[torch.nn.Parameter]) -> bool | None:
    """Under DDP, whether every process ends with the same trainable weights (a cheap checksum)."""
    if accelerator.num_processes == 1 or not plain_parallel(accelerator):
        return None
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
    everyone = accelerator.gather(total.to(accelerator.device))
    ok = bool(torch.allclose(everyone, everyone[:1].expand_as(everyone), rtol=0, atol=1e-9))
    if not ok:
        raise RuntimeError(f"processes ended with different weights (checksums {everyone.tolist()})")
    return ok


def release(accelerator: Any) -> None:
    """Free the accelerate state so that another `train` call in this process starts clean."""
    try:
        accelerator.free_memory()
    except Exception:  # noqa: BLE001 - best effort
        pass
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
