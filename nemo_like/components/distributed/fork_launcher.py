"""Run a function on N local ranks by forking the current process (gloo, CPU).

Why: ``torchrun`` starts fresh interpreters, and importing torch and transformers costs
5-6 s per process here. Forked children inherit everything already imported (and any
model already built), so a 2-rank FSDP2 check takes well under a second. Meant for
tests, notebooks and quick experiments on one machine; real jobs use ``torchrun``.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import torch


class RankFailed(RuntimeError):
    """A forked rank raised or died; carries that rank's traceback."""


def free_port() -> int:
    """A TCP port that was free a moment ago on localhost (for a rendezvous store)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(fn: Callable[..., Any], rank: int, world_size: int, port: int, init: bool, out: str,
           args: tuple, kwargs: dict) -> None:
    code = 0
    try:
        # Forked children must not reuse the parent's OpenMP pool (a fork after a threaded op can hang);
        # one thread per rank also keeps N ranks from fighting over the cores.
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
        if init:
            import torch.distributed as dist

            dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result: Any = ("ok", fn(*args, **kwargs))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        result = ("error", f"rank {rank}:\n{traceback.format_exc()}")
        code = 1
    try:
        import torch.distributed as dist

        if init and dist.is_initialized():
            dist.destroy_process_group()
        with open(out, "wb") as f:
            pickle.dump(result, f)
    finally:
        os._exit(code)


def run_on_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    init_process_group: bool = True,
    timeout_s: float = 300.0,
    **kwargs: Any,
) -> list[Any]:
    """Call ``fn(*args, **kwargs)`` on ``world_size`` forked ranks; returns each rank's result, rank order.

    Each child gets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` as torchrun would
    set them and, unless ``init_process_group=False``, an initialised gloo process group.
    A rank that raises makes this raise :class:`RankFailed` with its traceback; the others are
    ended. Results travel back by pickle, so return plain data.
    """
    import signal
    import time

    if world_size < 1:
        raise ValueError(f"world_size: must be at least 1, got {world_size}")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="nemo_like_ranks_") as tmp:
        outs = [os.path.join(tmp, f"rank{r}.pkl") for r in range(world_size)]
        pids = []
        for rank in range(world_size):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                _child(fn, rank, world_size, port, init_process_group, outs[rank], args, kwargs)
            pids.append(pid)
        deadline = time.monotonic() + timeout_s
        status: dict[int, int] = {}
        failed = False
        while len(status) < world_size:
            for rank, pid in enumerate(pids):
                if rank in status:
                    continue
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status[rank] = code
                    failed = failed or code != 0
            if len(status) == world_size:
                break
            if failed or time.monotonic() > deadline:
                # A failed rank leaves the others blocked in a collective: end them (only our own children).
                time.sleep(0.5 if failed else 0)
                for rank, pid in enumerate(pids):
                    if rank not in status:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        status[rank] = -9
                break
            time.sleep(0.005)
        results, errors = [], []
        for rank in range(world_size):
            if os.path.isfile(outs[rank]):
                with open(outs[rank], "rb") as f:
                    kind, value = pickle.load(f)
            else:
                kind, value = "error", f"rank {rank}: ended without a result (exit status {status.get(rank)})"
            (errors if kind == "error" else results).append(value)
        if errors:
            raise RankFailed("\n".join(errors))
        return results
