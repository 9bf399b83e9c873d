"""Small helpers for running the same code as one process or as ``torchrun`` ranks.

A run is distributed when torchrun's environment is present (``RANK`` set, as in nanoGPT:
``int(os.environ.get("RANK", -1)) != -1``). Then :func:`init` starts a process group: ``nccl``
when the device is CUDA (each rank on ``cuda:LOCAL_RANK``), ``gloo`` on CPU. Without torchrun,
every helper degrades to the single-process answer (rank 0 of 1, gather returns ``[obj]``), so
callers never branch on the launch mode.

For sharding evaluation, take items ``range(rank, N, world)`` and gather the results with
:func:`all_gather_object` or :func:`all_gather_tensors` (which allow a different length on each
rank); never ``DistributedSampler``, which pads by duplicating items.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .errors import UserError


INIT_TIMEOUT_S = float(os.environ.get("LMCONV_BENCH_DIST_TIMEOUT", 120))
"""Seconds to wait for every rank at start-up (torch's default is 30 minutes of silence)."""


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun, or unset it") from None


def torchrun_env() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when launched by torchrun, None when ``RANK`` is unset; UserError
    for a partial or inconsistent environment (no ``WORLD_SIZE``, non-numbers, rank out of range)."""
    r, w = _env_int("RANK"), _env_int("WORLD_SIZE")
    if r is None:
        return None
    if w is None:
        raise UserError(f"RANK={r} is set but WORLD_SIZE is not; launch with torchrun, or unset RANK")
    if w < 1 or not 0 <= r < w:
        raise UserError(f"RANK={r} and WORLD_SIZE={w} are inconsistent (need 0 <= RANK < WORLD_SIZE); launch with torchrun")
    return r, w


def launched_by_torchrun() -> bool:
    """True when torchrun's environment variables are present (``RANK`` is set); UserError when
    they are present but inconsistent (see :func:`torchrun_env`)."""
    return torchrun_env() is not None


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the only rank that writes files."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available else CPU. Under torchrun, a bare ``"cuda"`` (or ``"auto"``
    resolving to CUDA) becomes ``cuda:LOCAL_RANK``. Unusable devices raise :class:`UserError`."""
    name = str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but CUDA is not available; pass --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank() if launched_by_torchrun() else torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise UserError(f"device {dev} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {device!r} (lmconv-bench runs on CPU or CUDA); use auto, cpu, cuda or cuda:N")
    return dev


@dataclass(frozen=True)
class DistContext:
    """What :func:`init` set up: ``rank``/``world_size``, the ``device`` this rank computes on,
    and whether this call created the process group (then :func:`shutdown` destroys it)."""

    rank: int
    world_size: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.created_group


def init(device: str = "auto") -> DistContext:
    """Resolve the device and, under torchrun, start the process group (idempotent).

    Backend: ``nccl`` for CUDA devices, ``gloo`` otherwise. Returns a :class:`DistContext`.
    """
    dev = resolve_device(device)
    created = False
    if launched_by_torchrun() and not is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
            raise UserError("RANK is set but MASTER_ADDR/MASTER_PORT are not; launch with torchrun")
        import datetime

        try:
            dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None,
                                    timeout=datetime.timedelta(seconds=INIT_TIMEOUT_S))
            dist.barrier()  # every rank present, within the timeout
        except (RuntimeError, dist.DistError) as e:  # DistStoreError, timeouts
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UserError(
                f"could not start the {world_size() if is_initialized() else os.environ.get('WORLD_SIZE')}-process group "
                f"within {INIT_TIMEOUT_S:.0f} s ({first}); start every rank with torchrun, or raise "
                "LMCONV_BENCH_DIST_TIMEOUT"
            ) from None
        created = True
    return DistContext(rank(), world_size(), dev, created)


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init` created it."""
    if ctx.created_group and is_initialized():
        try:
            dist.barrier()  # no rank tears the group down while another still uses it
        except RuntimeError:
            pass  # a peer already failed; its error is the one to report
        dist.destroy_process_group()


@contextmanager
def distributed(device: str = "auto") -> Iterator[DistContext]:
    """``with distributed(device) as ctx:`` — :func:`init` on entry, :func:`shutdown` on exit."""
    ctx = init(device)
    try:
        yield ctx
    finally:
        shutdown(ctx)


def _comm_device() -> torch.device:
    """Where tensors must live for collectives: the current CUDA device under nccl, else CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks (returns a new tensor on ``t``'s device; ``t`` itself is unchanged)."""
    if not is_initialized():
        return t.clone()
    buf = t.detach().to(_comm_device()).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks."""
    return all_reduce_sum(t) / world_size()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), as a list indexed by rank. ``[obj]`` when not distributed."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t``, as a list indexed by rank; first dimensions may differ between ranks
    (trailing dimensions and dtype must agree). Results are on ``t``'s device."""
    if not is_initialized():
        return [t]
    dev = _comm_device()
    n = torch.tensor([t.shape[0] if t.dim() else 1], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    flat = t.detach().reshape(-1, *t.shape[1:]) if t.dim() else t.detach().reshape(1)
    pad = max(counts)
    buf = torch.zeros((pad, *flat.shape[1:]), dtype=flat.dtype, device=dev)
    buf[: flat.shape[0]] = flat.to(dev)
    bufs = [torch.empty_like(buf) for _ in range(world_size())]
    dist.all_gather(bufs, buf)
    return [b[:c].to(t.device) for b, c in zip(bufs, counts)]


def shard_indices(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's items of ``0 .. n-1``: ``range(rank, n, world)`` (no padding, no duplicates)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return range(r, n, w)


def on_main(fn, *args):
    """Run ``fn(*args)`` on rank 0 only and return its result on every rank; a UserError it raises
    is raised on every rank (so no rank waits forever at the next collective)."""
    result, err = None, None
    if is_main():
        try:
            result = fn(*args)
        except UserError as e:
            err = str(e)
    err = broadcast_object(err)
    if err is not None:
        raise UserError(err)
    return broadcast_object(result)
