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
import os
import pickle
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from clap_vla.errors import ClapError

J = TypeVar("J")
R = TypeVar("R")

MAX_CACHED_ENVS = 2
_ENVS: OrderedDict[tuple, Any] = OrderedDict()
_CLOSE_AT_EXIT = False


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
    global _CLOSE_AT_EXIT
    if not _CLOSE_AT_EXIT:
        # Close cached simulators (and their GL contexts) at exit. Registered after the simulator
        # has imported its GL backend, so this runs BEFORE the backend's own exit hook (atexit is
        # last-in, first-out), e.g. mujoco.egl's eglTerminate; left to garbage collection after
        # that, every renderer prints an EGLError traceback when a worker process exits.
        import atexit

        atexit.register(close_envs)
        _CLOSE_AT_EXIT = True
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


def _limit_threads(threads: int) -> None:
    """Worker initializer: `threads` intra-op threads per worker, so N workers do not oversubscribe
    the cores (every torch process defaults to all of them; on small machines the spin-waiting of
    oversubscribed OpenMP threads slows policy inference several-fold). Set before the policy
    imports torch; applied directly if it already has. A count the user set is kept."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_limit_threads, initargs=(threads,)) as pool:
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
