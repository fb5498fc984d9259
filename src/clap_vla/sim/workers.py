"""Run simulator jobs in worker processes, results in submission order.

Workers are spawned, not forked: each builds its own simulator and GL context (a forked EGL context
is not usable). Each worker keeps its most recently used environments between jobs (`cached_env`,
at most `MAX_CACHED_ENVS`), so a task's scene is compiled once per run of that task's jobs; jobs
come task by task, so an LRU of two is enough, and memory stays bounded however many tasks a run
has (a Meta-World env holds about 160 MB).

An exception inside a job reaches the caller as a `JobError` naming the simulator, task and seed,
with the original exception as its `__cause__` (also across processes, when it can be pickled).
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from clap_vla.errors import ClapError

J = TypeVar("J")
R = TypeVar("R")

MAX_CACHED_ENVS = 2
_ENVS: OrderedDict[tuple, Any] = OrderedDict()


def cached_env(env_name: str, task: str, **kwargs: Any) -> Any:
    """This process's environment for (simulator, task, options), built on first use. Keeps the
    `MAX_CACHED_ENVS` most recently used ones and closes the others."""
    from clap_vla.sim.registry import env_module

    key = (env_name, task, tuple(sorted(kwargs.items())))
    if key in _ENVS:
        _ENVS.move_to_end(key)
        return _ENVS[key]
    while len(_ENVS) >= MAX_CACHED_ENVS:
        _, old = _ENVS.popitem(last=False)
        old.close()
    env = env_module(env_name).make(task, **kwargs)
    _ENVS[key] = env
    return env


def close_envs() -> None:
    while _ENVS:
        _, env = _ENVS.popitem()
        env.close()


class JobError(Exception):
    """A job (one episode) failed. The message names the simulator, task and seed; `__cause__` is
    the original exception."""

    def __init__(self, message: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.original = original

    def __reduce__(self):
        # Send the original along only if it survives a pickle round trip (a worker's result must);
        # the formatted remote traceback always arrives (concurrent.futures attaches it).
        original = self.original
        try:
            pickle.loads(pickle.dumps(original))
        except Exception:
            original = None
        return (type(self), (str(self), original))


class JobClapError(JobError, ClapError):
    """A job failed with an error the user can act on (a ClapError: bad config, bad policy output)."""


def job_error(where: str, error: BaseException) -> JobError:
    """Wrap `error` raised by the job described by `where` (e.g. "metaworld task 'reach-v3', seed 3");
    raise the result `from error`."""
    if isinstance(error, ClapError):
        return JobClapError(f"{where}: {error}", error)
    return JobError(f"{where}: {type(error).__name__}: {error}", error)


def _result(future: Future) -> Any:
    try:
        return future.result()
    except JobError as e:
        # Across processes concurrent.futures replaces __cause__ by the remote traceback (text):
        # put the original exception back in front, with the remote traceback chained under it.
        original = e.original
        if original is not None and e.__cause__ is not original:
            if original.__cause__ is None:
                original.__cause__ = e.__cause__
            e.__cause__ = original
        raise


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
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        except BaseException:
            for f in pending:
                f.cancel()
            raise
