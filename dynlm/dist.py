"""Rank-aware helpers in one place (nanochat/lingua style).

Everything else asks these functions instead of checking `torch.distributed` itself, so a single-process
run and a `torchrun` run share one code path.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


class _Console(logging.Handler):
    """The message on stdout as looked up at each message (pytest's capture, redirections), drawn above any
    open tqdm bar rather than through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
            tqdm.write(level + self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


_messages = logging.getLogger("dynlm")
_messages.setLevel(logging.INFO)
_messages.propagate = False  # dynlm's messages are its own; Hydra's root handlers would print them twice
if not _messages.handlers:
    _messages.addHandler(_Console())


def print0(*args: Any) -> None:
    """A message of rank 0: on the console, and in the run folder's log while `log_file` is open."""
    if is_main():
        _messages.info(" ".join(str(a) for a in args))


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[None]:
    """Copy rank 0's messages, with their time, to `path` (appended: a resumed run continues its log)."""
    if not is_main():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    _messages.addHandler(handler)
    try:
        yield
    except BaseException as e:  # why the run stopped, for whoever reads the log of a run left alone
        handler.handle(logging.LogRecord("dynlm", logging.ERROR, __file__, 0,
                                         f"stopped: {type(e).__name__}: {e}", None, None))
        raise
    finally:
        _messages.removeHandler(handler)
        handler.close()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place, returned for chaining); a no-op on one process."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


# --- process group ------------------------------------------------------------------------------------------


def default_backend() -> str:
    """NCCL when there is a GPU, gloo otherwise (CPU runs, tests)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: Optional[str] = None) -> bool:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Returns True when this call created the group (the caller then calls `destroy()` at the end), False when
    there is nothing to do: not launched by torchrun, or a group already exists.
    """
    if is_distributed() or not launched_by_torchrun():
        return False
    backend = backend or default_backend()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.dist_backend=nccl needs CUDA GPUs; use trainer.dist_backend=gloo on CPUs")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # before the group: NCCL binds to this device
    store = _attempt_store()
    if store is None:
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))
    return True


def _agent_store(timeout_s: Optional[float] = None):
    """The job-wide store that torchrun's agent keeps across restarts (None when workers do not share it)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    from torch.distributed.constants import default_pg_timeout

    timeout = default_pg_timeout if timeout_s is None else timedelta(seconds=timeout_s)
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                         is_master=False, timeout=timeout)


def _attempt_store():
    """torchrun's agent keeps one TCP store for the whole job, across restarts, and workers join it without a
    per-attempt prefix: a restarted attempt would read the failed attempt's keys (the dead ranks' gloo/NCCL
    addresses: "Connection refused") and fail. Each attempt gets its own key prefix instead."""
    client = _agent_store()
    return None if client is None else dist.PrefixStore(f"dynlm/attempt_{restart_count()}/", client)


def destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()


def restart_count() -> int:
    """How many times torchrun has restarted this job (0 on the first attempt and outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def inject_failure(fail_at_step: Optional[int], step: int) -> None:
    """Fault injection for the elastic-restart test (`trainer.fail_at_step`): the last rank dies at that step,
    on the first attempt only, so the restarted job can finish."""
    if fail_at_step is not None and step == fail_at_step and restart_count() == 0 and rank() == world_size() - 1:
        raise RuntimeError(f"injected failure on rank {rank()} at step {step} (trainer.fail_at_step)")


# --- a user error stops the whole torchrun job ----------------------------------------------------------------
# torchrun restarts a failed job whatever its exit status (torch.distributed.elastic has no status it does not
# retry), and every attempt would fail on the same config or data error: the first attempt records it in the
# agent's store, which outlives the attempts, and the restarts find it there and stop at once.

_USER_ERROR = "dynlm/user_error"


def claim_user_error(message: str) -> bool:
    """Record `message` as the user error that stops this torchrun job. True for the one process of the job that
    prints it (every rank usually hits the same error); outside torchrun, True."""
    if not launched_by_torchrun():
        return True
    try:
        store = _agent_store(timeout_s=10)
        if store is not None:
            first = store.add(_USER_ERROR + "_count", 1) == 1
            if first:
                store.set(_USER_ERROR, message)
            return first
    except RuntimeError:  # the agent's store is gone: rank 0 speaks for the job
        pass
    return os.environ.get("RANK", "0") == "0"


def user_error_of_job() -> Optional[str]:
    """On a restart of a torchrun job: the user error that stopped an earlier attempt (None if none did)."""
    if restart_count() == 0:
        return None
    try:
        store = _agent_store(timeout_s=10)
        if store is not None and store.check([_USER_ERROR]):
            return store.get(_USER_ERROR).decode("utf-8")
    except RuntimeError:
        pass
    return None


def tell_torchrun(message: str) -> None:
    """Show `message` in torchrun's failure summary (its per-worker error file) instead of a link to its docs."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            # the layout torch's own `record` writes; its summary shows py_callstack in place of a traceback
            json.dump({"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                                     "timestamp": str(int(time.time()))}}}, f)


# --- collectives (no-ops on one process) ---------------------------------------------------------------------


def _comm_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_float(x: float, src: int = 0) -> float:
    """Rank `src`'s value on every rank: decisions that must agree (stop on time, best checkpoint)."""
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, src)
    return float(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def sum_floats(*values: float) -> List[float]:
    """Sums over ranks of a few Python numbers, in one all-reduce (float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    all_reduce_sum(t)
    return t.tolist()


def gather_objects(obj: Any) -> Optional[List[Any]]:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def gather_streams(t: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-stream rows `[b, ...]` of every rank -> the global `[B, ...]` on rank 0 (CPU), None elsewhere.

    Streams are strided over ranks (global stream j is row j // world of rank j % world), so the result is
    in global stream order whatever the number of ranks: a checkpoint saved by W ranks resumes on W' ranks.
    """
    t = t.detach().contiguous()
    if not is_distributed():
        return t.cpu()
    parts = [torch.empty_like(t) for _ in range(world_size())] if is_main() else None
    dist.gather(t, parts, dst=0)
    if not is_main():
        return None
    return torch.stack([p.cpu() for p in parts], dim=1).reshape(-1, *t.shape[1:])


def shard_streams(t: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global per-stream tensor `[B, ...]` (the inverse of `gather_streams`)."""
    return t[rank() :: world_size()].contiguous()
