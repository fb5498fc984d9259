"""Simulator-free parts of the harness: the worker env cache, job errors across processes, how a
policy spec becomes a policy, and the generation attempt limit under look-ahead."""

from __future__ import annotations

import pickle
from collections import deque
from concurrent.futures import Future

import numpy as np
import pytest

from clap_vla.errors import ClapError, ConfigError
from clap_vla.sim import workers
from clap_vla.sim.policies import RandomPolicy, episode_policy, is_policy_object, load_factory


class _FakeEnv:
    def __init__(self, name: str, closed: list[str]) -> None:
        self.name, self._closed = name, closed

    def close(self) -> None:
        self._closed.append(self.name)


def test_env_cache_is_an_lru_of_two(monkeypatch):
    from clap_vla.sim import registry

    closed: list[str] = []
    built: list[str] = []

    class FakeModule:
        @staticmethod
        def make(task, **kwargs):
            built.append(task)
            return _FakeEnv(task, closed)

    monkeypatch.setattr(registry, "env_module", lambda name: FakeModule)
    monkeypatch.setattr(workers, "_ENVS", type(workers._ENVS)())
    a = workers.cached_env("fake", "a", size=16)
    b = workers.cached_env("fake", "b", size=16)
    assert workers.cached_env("fake", "a", size=16) is a  # a hit makes "a" the most recent
    workers.cached_env("fake", "c", size=16)  # evicts "b", the least recently used
    assert closed == ["b"] and len(workers._ENVS) == workers.MAX_CACHED_ENVS == 2
    assert workers.cached_env("fake", "a", size=16) is a
    assert workers.cached_env("fake", "b", size=16) is not b  # rebuilt
    assert closed == ["b", "c"] and built == ["a", "b", "c", "b"]
    workers.close_envs()
    assert sorted(closed) == ["a", "b", "b", "c"] and not workers._ENVS


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not picklable")


class _TwoArgs(Exception):  # pickles, but does not unpickle (its args are one message)
    def __init__(self, a, b):
        super().__init__(f"{a} {b}")


def test_job_error_keeps_the_original_as_cause_across_processes():
    original = ValueError("boom")
    try:
        try:
            raise original
        except ValueError as e:
            raise workers.job_error("metaworld task 'reach-v3', seed 7", e) from e
    except workers.JobError as e:
        err = e
    assert str(err) == "metaworld task 'reach-v3', seed 7: ValueError: boom"
    assert err.__cause__ is original and not isinstance(err, ClapError)
    # What a worker process sends back: the pickled error, whose __cause__ concurrent.futures sets to
    # the remote traceback (text). _result puts the original back in front of it.
    received = pickle.loads(pickle.dumps(err))
    remote = RuntimeError("remote traceback text")
    received.__cause__ = remote
    future: Future = Future()
    future.set_exception(received)
    with pytest.raises(workers.JobError, match="seed 7: ValueError: boom") as info:
        workers._result(future)
    assert isinstance(info.value.__cause__, ValueError) and str(info.value.__cause__) == "boom"
    assert info.value.__cause__.__cause__ is remote
    # A ClapError stays a ClapError (the CLI prints its message); an original that cannot be pickled
    # is dropped in transit, the message survives.
    clap = workers.job_error("robosuite task 'TwoArmLift', seed 1", ConfigError("bad value"))
    assert isinstance(clap, ClapError) and str(clap) == "robosuite task 'TwoArmLift', seed 1: bad value"
    lost = pickle.loads(pickle.dumps(workers.job_error("x", _Unpicklable("y"))))
    assert lost.original is None and str(lost) == "x: _Unpicklable: y"
    lost = pickle.loads(pickle.dumps(workers.job_error("x", _TwoArgs("a", "b"))))
    assert lost.original is None and str(lost) == "x: _TwoArgs: a b"


class _Policy:
    def __init__(self, env=None, seed=None) -> None:
        self.args = (env, seed)

    def infer(self, observation):
        return np.zeros((1, 7), np.float32)


def _function_factory(env, seed):
    return _Policy(env, seed)


def test_factories_and_policy_objects_are_told_apart():
    env = object()
    # A class is a factory even though it has an `infer` attribute; so is a function.
    made = episode_policy(_Policy, env, 5)
    assert isinstance(made, _Policy) and made.args == (env, 5)
    assert episode_policy(_function_factory, env, 6).args == (env, 6)
    # An instance with infer is the policy itself, for every episode.
    obj = _Policy()
    assert episode_policy(obj, env, 7) is obj
    assert is_policy_object(obj) and not is_policy_object(_Policy) and not is_policy_object(_function_factory)
    with pytest.raises(ConfigError, match="no infer"):
        episode_policy(lambda e, s: 3, env, 0)
    with pytest.raises(ConfigError, match="neither a factory"):
        episode_policy(3, env, 0)


def test_load_factory_accepts_classes_and_policy_objects(tmp_path, monkeypatch):
    (tmp_path / "clap_test_policies.py").write_text(
        "import numpy as np\n"
        "class MyPolicy:\n"
        "    def __init__(self, env, seed):\n"
        "        self.seed = seed\n"
        "    def infer(self, observation):\n"
        "        return np.zeros((1, 7), np.float32)\n"
        "POLICY = MyPolicy(None, -1)\n"
        "NUMBER = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = load_factory("clap_test_policies:MyPolicy")
    assert isinstance(cls, type) and episode_policy(cls, None, 9).seed == 9
    obj = load_factory("clap_test_policies:POLICY")
    assert episode_policy(obj, None, 9) is obj and obj.seed == -1
    with pytest.raises(ConfigError, match="'NUMBER' is a int, neither a factory"):
        load_factory("clap_test_policies:NUMBER")
    with pytest.raises(ConfigError, match="cannot load"):
        load_factory("clap_test_policies:missing")


def test_random_policy_uses_the_envs_random_action():
    class Env:
        def random_action(self, rng):
            return rng.uniform(-1, 1, 7)

    state = {"state": np.zeros(7, np.float32)}
    with_env = RandomPolicy(np.random.default_rng(0), env=Env()).infer(state)
    np.testing.assert_allclose(with_env, np.random.default_rng(0).uniform(-1, 1, (1, 7)), atol=1e-6)
    plain = RandomPolicy(np.random.default_rng(0)).infer(state)  # absolute targets near the state
    assert plain.shape == (1, 7) and np.abs(plain[0, :3]).max() <= 0.05 and (plain[0, 3:6] == 0).all()


def _lookahead_imap(fn, jobs, workers, lookahead=2):
    """ordered_imap's scheduling without processes: up to workers * lookahead jobs are taken from the
    generator before the oldest result is handed back."""
    pending: deque = deque()
    for job in jobs:
        pending.append(fn(job))
        while len(pending) >= workers * lookahead:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def _fake_demo_runner(successes: set[int]):
    from clap_vla.sim.generate import Demo

    def run(job):
        return Demo(
            task=job.task,
            seed=job.seed,
            k=job.k,
            success=job.k in successes,
            instruction="reach the goal position",
            robot_type="sawyer",
            arms=("right",),
            fps=10,
            images={"corner": np.full((2, 16, 16, 3), job.k, np.uint8)},
            state=np.full((2, 7), job.k, np.float32),
            action=np.full((2, 7), job.k, np.float32),
            subtasks=["reach the goal position"] * 2,
        )

    return run


@pytest.mark.parametrize(
    ("episodes", "successes", "expected"),
    [
        (1, {22}, 23),  # the last success before the limit (24 seeds for one episode)
        (2, {0, 27}, 28),  # the second success on the very last allowed seed
        (1, set(), None),  # never: the limit
        (2, {3}, None),  # one of two
    ],
)
def test_attempt_limit_does_not_depend_on_look_ahead(tmp_path, monkeypatch, episodes, successes, expected):
    pytest.importorskip("metaworld")  # resolve_tasks checks that the simulator is installed
    from clap_vla.configs.sim import GenConfig
    from clap_vla.sim import generate as gen

    real_imap = workers.ordered_imap

    def imap(fn, jobs, n):  # one worker: the real in-process path; more: the pool's look-ahead
        return real_imap(fn, jobs, 1) if n == 1 else _lookahead_imap(fn, jobs, n)

    monkeypatch.setattr(gen, "run_demo", _fake_demo_runner(successes))
    monkeypatch.setattr(workers, "ordered_imap", imap)
    outcomes = []
    for n in (1, 2, 4):
        cfg = GenConfig(
            env="metaworld", out=tmp_path / f"w{n}", tasks="reach", episodes=episodes, workers=n, size=16,
            codec="h264", progress=False,
        )  # fmt: skip
        try:
            summary = gen.generate(cfg)
            outcomes.append(summary["attempts"]["reach-v3"])
        except ClapError as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1] == outcomes[2], outcomes
    if expected is None:
        limit = gen.MAX_ATTEMPTS_FACTOR * episodes + 20
        assert f"succeeded in only {len(successes)} of {limit} episodes" in outcomes[0]
    else:
        assert outcomes[0] == expected


def test_workers_share_the_cores_instead_of_oversubscribing(monkeypatch):
    """Each of N worker processes gets cores // N intra-op threads (torch reads OMP_NUM_THREADS when
    the policy imports it); a value the user set is kept."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    got = list(workers.ordered_imap(os.getenv, ["OMP_NUM_THREADS"] * 2, 2))
    assert got == [str(max(1, cores // 2))] * 2
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert list(workers.ordered_imap(os.getenv, ["OMP_NUM_THREADS"] * 2, 2)) == ["7", "7"]


def test_worker_processes_close_their_simulators_before_gl_shuts_down(tmp_path):
    """Cached MuJoCo renderers are closed by an exit hook that runs before the GL backend's own;
    left to garbage collection, every worker printed an EGLError traceback at exit."""
    import subprocess
    import sys

    pytest.importorskip("metaworld")
    cmd = [sys.executable, "-m", "clap_vla", "data", "gen", "metaworld", "--tasks", "reach-v3", "--episodes", "2",
           "--size", "32", "--workers", "2", "--codec", "h264", "--no-progress",
           "--out", str(tmp_path / "d")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "GLError" not in res.stderr, res.stderr[-2000:]
