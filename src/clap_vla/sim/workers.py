"""Run simulator jobs in worker processes, results in submission order.

Workers are spawned, not forked: each builds its own simulator and GL context (a forked EGL context
is not usable). Each worker keeps its environments between jobs (`cached_env`), so a task's scene
is compiled once per process.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")

_ENVS: dict[tuple, Any] = {}


def cached_env(env_name: str, task: str, **kwargs: Any) -> Any:
    """This process's environment for (simulator, task, options), built on first use."""
    from clap_vla.sim.registry import env_module

    key = (env_name, task, tuple(sorted(kwargs.items())))
    if key not in _ENVS:
        _ENVS[key] = env_module(env_name).make(task, **kwargs)
    return _ENVS[key]


def close_envs() -> None:
    while _ENVS:
        _, env = _ENVS.popitem()
        env.close()


def ordered_imap(fn: Callable[[J], R], jobs: Iterable[J], workers: int, lookahead: int = 2) -> Iterator[R]:
    """`map(fn, jobs)` over `workers` processes (in-process when workers == 1), keeping at most
    `workers * lookahead` jobs in flight. `jobs` is consumed lazily, so it may depend on results
    already yielded."""
    it = iter(jobs)
    if workers == 1:
        try:
            for job in it:
                yield fn(job)
        finally:
            close_envs()
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future] = deque()
        try:
            for job in it:
                pending.append(pool.submit(fn, job))
                while len(pending) >= workers * lookahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise
