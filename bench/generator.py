"""Orchestrator side of the load generator: a pool of worker processes on the generator core."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from bench.common import GENERATOR_CPU, cpu_seconds
from bench.worker import worker_main

#: Connections per worker process at most (the per-process fd limit here is 20,000).
MAX_CONNECTIONS_PER_WORKER = 5000


class WorkerError(RuntimeError):
    pass


def workers_for(connections: int, minimum: int = 2) -> int:
    return max(minimum, -(-connections // MAX_CONNECTIONS_PER_WORKER))


def split(items: Sequence[Any], parts: int, chunk: int = 1) -> list[list[Any]]:
    """Deal ``items`` out to ``parts`` lists, keeping runs of ``chunk`` items together."""
    out: list[list[Any]] = [[] for _ in range(parts)]
    groups = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    for i, group in enumerate(groups):
        out[i % parts].extend(group)
    return out


class GeneratorPool:
    """``n`` worker processes, each running :func:`bench.worker.worker_main`."""

    def __init__(self, n: int, cpu: int | None = GENERATOR_CPU) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.procs: list[BaseProcess] = []
        try:
            for i in range(n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=worker_main, args=(child, i, cpu), name=f"bench-worker-{i}", daemon=True
                )
                proc.start()
                child.close()
                self.pipes.append(parent)
                self.procs.append(proc)
            self.call_all("ping", [{}] * n, timeout=60)
        except BaseException:
            self.close()
            raise

    def cpu_seconds(self) -> float:
        """CPU time the worker processes used so far (all on the generator's core)."""
        return sum(cpu_seconds(p.pid) for p in self.procs if p.pid is not None)

    def __len__(self) -> int:
        return len(self.procs)

    def __enter__(self) -> GeneratorPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call_all(
        self, command: str, args: Sequence[dict[str, Any]], timeout: float = 600.0
    ) -> list[dict[str, Any]]:
        """Send ``command`` with ``args[i]`` to worker ``i``; wait for every reply."""
        self.send_all(command, args)
        return self.gather(command, timeout)

    def send_all(self, command: str, args: Sequence[dict[str, Any]]) -> None:
        if len(args) != len(self.pipes):
            raise ValueError("one argument dict per worker is needed")
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((command, arg))

    def gather(self, command: str, timeout: float = 600.0) -> list[dict[str, Any]]:
        """One reply per worker to the command sent last."""
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        for i, pipe in enumerate(self.pipes):
            while not pipe.poll(0.2):
                if not self.procs[i].is_alive():
                    raise WorkerError(f"generator worker {i} died")
                if time.monotonic() > deadline:
                    raise WorkerError(f"generator worker {i} did not answer {command!r}")
            reply: dict[str, Any] = pipe.recv()
            if "error" in reply:
                raise WorkerError(f"worker {i} failed on {command!r}: {reply['trace']}")
            replies.append(reply)
        return replies

    def close(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs, strict=False):
            if proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    pipe.send(("exit", {}))
        deadline = time.monotonic() + 10
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.close()
        self.pipes.clear()
        self.procs.clear()
