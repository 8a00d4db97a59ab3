"""Joining the other ranks: torch.distributed's process group, from the environment torchrun sets.

torchrun starts one process per rank and gives each RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
the processes meet at MASTER_ADDR:MASTER_PORT (rank 0 hosts a small key-value store there) and connect to one
another. gloo carries the tensors between CPU processes, NCCL between GPUs.

Every wait is bounded by one timeout (timeout_s, default $MINIMOE_DIST_TIMEOUT or 120 s): a rank that never
starts makes the others fail at the rendezvous after it, and a rank that dies mid-run makes the others' next
collective fail (at once when its connections close, at the latest after the timeout), each with one sentence.
"""

from __future__ import annotations

import datetime
import os

import torch

from minimoe.parallel.experts import ExpertParallel, ExpertParallelError

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init(device: str | torch.device = "cpu", *, dispatch: str = "auto", timeout_s: float | None = None,
         backend: str | None = None) -> ExpertParallel:
    """Join the process group torchrun describes and return this rank's ExpertParallel.

    device: where the model will run ("cpu" -> gloo; "cuda" -> NCCL, and this rank uses GPU $LOCAL_RANK).
    backend: override the choice ("gloo" also works with CUDA tensors, more slowly).
    """
    import torch.distributed as dist

    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise ValueError("expert parallelism runs one process per rank, started by torchrun, e.g. "
                         "`torchrun --nproc-per-node 2 -m minimoe generate --expert-parallel ...`; "
                         f"found no {', '.join('$' + m for m in missing)}")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if timeout_s is None:
        timeout_s = float(os.environ.get("MINIMOE_DIST_TIMEOUT", "120"))
    if timeout_s <= 0:
        raise ValueError(f"the expert-parallel timeout must be positive, found {timeout_s:g} s")
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ExpertParallelError(
                f"expert-parallel rank {rank} of {world}: the {world} ranks did not all meet at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s (did a rank fail "
                f"to start?) ({first})") from None
    return ExpertParallel(rank=rank, world=world, dispatch=dispatch, timeout_s=timeout_s, device=str(device))


def shutdown() -> None:
    """Leave the process group (at the end of a run; safe to call when none was joined)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
