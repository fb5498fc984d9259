"""`clap serve` end to end: a real server on a free localhost port in a background thread and real
websocket clients. The wire bytes match openpi-client's msgpack-numpy exactly; a client written the
way openpi's is (raw websockets + the reference packer) talks to the server unchanged; refused
requests get an error reply and the same connection then still serves; API keys; concurrency; a
trained CLAP-NTP artifact served by its path; the CLI stage starts and stops on SIGTERM."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from clap_vla.configs.serve import ServeConfig
from clap_vla.errors import ClapError, ConfigError
from clap_vla.serve.client import BadRequest, PolicyClient, RemoteError, RemotePolicy, ServerError
from clap_vla.serve.protocol import packb, unpackb
from clap_vla.serve.server import PolicyServer, ServerThread

# openpi's client calls connect() outside a `with`, which websockets >= 17.1 deprecates; ours does not.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

LIMIT_MB = 0.25  # small, so an oversized request is cheap to build


# The reference packer/unpacker, written from openpi-client 0.1.2's msgpack_numpy (not imported: it pins numpy<2).
def ref_pack(obj):
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def ref_unpack(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


class OpenpiStyleClient:
    """What openpi's WebsocketClientPolicy does: connect without compression or size limit, read the
    metadata, then pack / send / receive, raising on a text frame."""

    def __init__(self, url: str, headers=None):
        self.ws = connect(url, compression=None, max_size=None, additional_headers=headers)
        self.metadata = msgpack.unpackb(self.ws.recv(), object_hook=ref_unpack)

    def send_raw(self, data):
        self.ws.send(data)
        return self.ws.recv(timeout=10)

    def infer(self, obs):
        reply = self.send_raw(msgpack.packb(obs, default=ref_pack))
        if isinstance(reply, str):
            raise RuntimeError(f"Error in inference server:\n{reply}")
        return msgpack.unpackb(reply, object_hook=ref_unpack)


class TiledState:
    """Deterministic: the state repeated over a 4-step chunk, row i shifted by i in x. Its instruction
    can ask it to fail in the ways a real policy might."""

    def infer(self, obs):
        if obs["instruction"] == "crash":
            raise RuntimeError("the model exploded")
        if obs["instruction"] == "bad shape":
            return np.zeros((4, 3), np.float32)
        if obs["instruction"] == "refuse":
            raise ConfigError("the policy reads camera 'wrist'; the observation has ['main']")
        return expected(obs)


def expected(obs) -> np.ndarray:
    out = np.tile(np.asarray(obs["state"], np.float32), (4, 1))
    out[:, 0] += np.arange(4, dtype=np.float32)
    return out


def make_obs(seed: int = 0, arms: int = 1, size: int = 16, **over):
    rng = np.random.default_rng(seed)
    obs = {
        "images": {"main": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)},
        "state": rng.standard_normal(7 * arms).astype(np.float32),
        "instruction": "open the drawer",
        "robot_type": "toy",
    }
    return {**obs, **over}


@pytest.fixture(scope="module")
def server():
    cfg = ServeConfig(policy="tests.serve:TiledState", port=0, max_message_mb=LIMIT_MB)
    with ServerThread(PolicyServer(TiledState(), cfg)) as s:
        yield s


def test_wire_bytes_are_openpi_msgpack_numpy():
    msg = {"state": np.array([1, 2], np.uint8), "n": np.float32(0.5)}
    hand = (
        b"\x82"  # map of 2
        b"\xa5state" b"\x84"  # "state": map of 4
        b"\xc4\x0b__ndarray__\xc3"  # bin "__ndarray__": true
        b"\xc4\x04data\xc4\x02\x01\x02"  # bin "data": bin 01 02
        b"\xc4\x05dtype\xa3|u1"  # bin "dtype": str "|u1"
        b"\xc4\x05shape\x91\x02"  # bin "shape": [2]
        b"\xa1n" b"\x83"  # "n": map of 3
        b"\xc4\x0d__npgeneric__\xc3"
        b"\xc4\x04data\xcb" + struct.pack(">d", 0.5) +  # item() is a Python float: float64
        b"\xc4\x05dtype\xa3<f4"
    )  # fmt: skip
    assert packb(msg) == hand == msgpack.packb(msg, default=ref_pack)
    back = unpackb(hand)
    assert back["state"].dtype == np.uint8 and back["state"].tolist() == [1, 2] and back["state"].flags.writeable
    assert back["n"] == np.float32(0.5) and back["n"].dtype == np.float32
    # A realistic message: byte-identical to the reference, and each side decodes the other's.
    obs = {**make_obs(3, arms=2), "extra": [np.int64(7), {"mask": np.array([True, False])}, np.zeros((2, 0), "<f8")]}
    assert packb(obs) == msgpack.packb(obs, default=ref_pack)
    for decoded in (unpackb(packb(obs)), msgpack.unpackb(packb(obs), object_hook=ref_unpack)):
        np.testing.assert_array_equal(decoded["images"]["main"], obs["images"]["main"])
        np.testing.assert_array_equal(decoded["state"], obs["state"])
        assert decoded["extra"][0] == 7 and decoded["extra"][1]["mask"].tolist() == [True, False]


def test_round_trip_metadata_first_then_exact_actions(server):
    with PolicyClient(server.url) as c:
        md = c.metadata
        assert md["protocol"] == "openpi-msgpack-numpy" and md["protocol_version"] == 1
        assert md["policy"]["class"] == "TiledState" and md["limits"]["max_message_bytes"] == int(LIMIT_MB * 2**20)
        for arms in (1, 2):
            obs = make_obs(arms, arms=arms)
            reply = c.infer(obs)
            assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (4, 7 * arms)
            np.testing.assert_array_equal(reply["actions"], expected(obs))
            assert {"infer_ms", "decode_ms", "queue_ms"} <= set(reply["server_timing"])
        assert "prev_total_ms" in reply["server_timing"]  # openpi's: the previous request's turnaround


def test_an_openpi_style_client_works_unchanged(server):
    c = OpenpiStyleClient(server.url)
    assert c.metadata["server"] == "clap-vla"
    obs = make_obs(5)
    np.testing.assert_array_equal(c.infer(obs)["actions"], expected(obs))
    with pytest.raises(RuntimeError, match="Error in inference server:\nbad request: missing key 'state'"):
        c.infer({k: v for k, v in obs.items() if k != "state"})
    np.testing.assert_array_equal(c.infer(obs)["actions"], expected(obs))  # the same connection still serves


def _object_array() -> bytes:
    return msgpack.packb({**make_obs(), "state": {b"__ndarray__": True, b"data": pickle.dumps(["x"]), b"dtype": "|O",
                                                  b"shape": [1]}}, default=ref_pack)  # fmt: skip


BAD_REQUESTS = {
    "missing key": (lambda: packb({k: v for k, v in make_obs().items() if k != "images"}), ["missing key 'images'"]),
    "state dtype": (lambda: packb(make_obs(state=np.arange(7))), ["state:", "int64 array of shape (7,)", "float"]),
    "state shape": (lambda: packb(make_obs(state=np.zeros(6, np.float32))), ["state:", "(6,)", "(7,) or (14,)"]),
    "state nan": (lambda: packb(make_obs(state=np.full(7, np.nan, np.float32))), ["state: non-finite"]),
    "image dtype": (
        lambda: packb(make_obs(images={"main": np.zeros((16, 16, 3), np.float32)})),
        ["images['main']", "float32 array of shape (16, 16, 3)", "uint8"],
    ),
    "image shape": (
        lambda: packb(make_obs(images={"main": np.zeros((16, 16, 4), np.uint8)})),
        ["images['main']", "(16, 16, 4)", "(h, w, 3)"],
    ),
    "instruction type": (lambda: packb(make_obs(instruction=3)), ["instruction: expected a str, got int"]),
    "not a map": (lambda: packb([1, 2]), ["observation map", "list"]),
    "oversized": (lambda: packb(make_obs(size=400)), ["480,", "bytes; the limit is 262,144"]),
    "malformed msgpack": (lambda: b"\x84\xa6images\xc1", ["not valid msgpack"]),
    "truncated msgpack": (lambda: packb(make_obs())[:-5], ["not valid msgpack"]),
    "object dtype": (_object_array, ["state: dtype '|O' is not accepted"]),
    "big-endian": (lambda: packb(make_obs(state=np.zeros(7, ">f4"))), ["state: dtype '>f4' is not accepted"]),
    "data length": (
        lambda: msgpack.packb({"state": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f4", b"shape": [7]}}),
        ["state: 8 bytes of data for shape (7,) float32 (expected 28"],
    ),
    "hostile shape": (
        lambda: msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "|u1", b"shape": [2**40, 2**40]}}),
        ["x: shape", "elements; the limit is"],
    ),
    "extension type": (lambda: msgpack.packb({"x": msgpack.ExtType(42, b"pwn")}), ["extension type 42"]),
    "text frame": (lambda: "hello", ["text frame"]),
    "policy refuses": (lambda: packb(make_obs(instruction="refuse")), ["the policy refused", "camera 'wrist'"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_clear_reply_and_the_connection_keeps_serving(server, case):
    build, fragments = BAD_REQUESTS[case]
    other = PolicyClient(server.url)  # a second client, connected throughout
    c = OpenpiStyleClient(server.url)
    reply = c.send_raw(build())
    assert isinstance(reply, str) and reply.startswith("bad request: "), reply
    for f in fragments:
        assert f in reply, (f, reply)
    for seed in (1, 2):
        obs = make_obs(seed)
        np.testing.assert_array_equal(c.infer(obs)["actions"], expected(obs))
        np.testing.assert_array_equal(other.infer(obs)["actions"], expected(obs))
    other.close()


def test_our_client_raises_bad_request_then_keeps_working(server):
    with PolicyClient(server.url) as c:
        with pytest.raises(BadRequest, match=r"images\['main'\]: expected a uint8 array"):
            c.infer(make_obs(images={"main": np.zeros((8, 8), np.uint8)}))
        assert isinstance(BadRequest("x"), ClapError)
        obs = make_obs(9)
        np.testing.assert_array_equal(c.infer(obs)["actions"], expected(obs))


@pytest.mark.parametrize("instruction", ["crash", "bad shape"])
def test_a_policy_failure_closes_only_that_connection_with_1011(server, instruction):
    other = PolicyClient(server.url)
    c = PolicyClient(server.url)
    with pytest.raises(ServerError, match="internal server error") as e:
        c.infer(make_obs(instruction=instruction))
    assert "Traceback" not in str(e.value)  # tracebacks stay in the server log unless --tracebacks
    with pytest.raises(ConnectionClosed) as closed:
        c.infer(make_obs())
    assert closed.value.rcvd.code == 1011
    obs = make_obs(4)
    np.testing.assert_array_equal(other.infer(obs)["actions"], expected(obs))
    other.close()


def test_a_message_beyond_four_times_the_limit_drops_the_connection_only(server):
    other = PolicyClient(server.url)
    c = OpenpiStyleClient(server.url)
    with pytest.raises(ConnectionClosed) as closed:
        c.send_raw(b"\0" * int(4.5 * LIMIT_MB * 2**20))
    assert closed.value.rcvd.code == 1009  # message too big
    obs = make_obs(6)
    np.testing.assert_array_equal(other.infer(obs)["actions"], expected(obs))
    other.close()


def test_shutdown_lets_the_request_in_flight_finish():
    started = threading.Event()

    class Slow:
        def infer(self, obs):
            started.set()
            time.sleep(0.5)
            return expected(obs)

    st = ServerThread(PolicyServer(Slow(), ServeConfig(policy="slow", port=0))).__enter__()
    c, obs, got = PolicyClient(st.url), make_obs(3), {}
    t = threading.Thread(target=lambda: got.update(reply=c.infer(obs)))
    t.start()
    assert started.wait(5)
    st.__exit__(None, None, None)  # as on SIGTERM: drain, then close
    t.join(5)
    np.testing.assert_array_equal(got["reply"]["actions"], expected(obs))
    with pytest.raises(ConnectionClosed) as closed:
        c.infer(obs)
    assert closed.value.rcvd.code == 1001  # going away
    with pytest.raises(RemoteError, match="cannot connect"):
        PolicyClient(st.url)


def test_api_key():
    cfg = ServeConfig(policy="tests.serve:TiledState", port=0, api_key="s3cret-key")
    with ServerThread(PolicyServer(TiledState(), cfg)) as s:
        with pytest.raises(RemoteError, match="HTTP 401"):
            PolicyClient(s.url)
        with pytest.raises(RemoteError, match="HTTP 403"):
            PolicyClient(s.url, api_key="wrong")
        with pytest.raises(InvalidStatus, match="HTTP 401"):
            OpenpiStyleClient(s.url, headers={"Authorization": "Bearer s3cret-key"})
        obs = make_obs(7)
        with PolicyClient(s.url, api_key="s3cret-key") as c:
            np.testing.assert_array_equal(c.infer(obs)["actions"], expected(obs))
        # openpi's client sends exactly this header for api_key=...
        c = OpenpiStyleClient(s.url, headers={"Authorization": "Api-Key s3cret-key"})
        np.testing.assert_array_equal(c.infer(obs)["actions"], expected(obs))
        with urllib.request.urlopen(f"http://127.0.0.1:{s.server.port}/healthz", timeout=5) as r:
            assert r.status == 200
    with pytest.raises(ConfigError, match="api_key"):
        ServeConfig(policy="random", api_key="has space")


def test_concurrent_clients_get_their_own_answers(server):
    n_threads, n_requests = 6, 20
    errors: list[str] = []

    def worker(t: int) -> None:
        try:
            with PolicyClient(server.url) as c:
                for i in range(n_requests):
                    obs = make_obs(1000 * t + i, arms=1 + (t + i) % 2)
                    got = c.infer(obs)["actions"]
                    if not np.array_equal(got, expected(obs)):
                        errors.append(f"thread {t} request {i}: wrong actions")
        except Exception as e:
            errors.append(f"thread {t}: {type(e).__name__}: {e}")

    before = server.server.stats["requests"]
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert server.server.stats["requests"] - before >= n_threads * n_requests


def test_remote_policy_is_a_rollout_policy(server):
    pol = RemotePolicy(server.url)
    obs = make_obs(8, arms=2)
    np.testing.assert_array_equal(pol.infer(obs), expected(obs))
    clone = pickle.loads(pickle.dumps(pol))  # travels to rollout workers without its socket
    np.testing.assert_array_equal(clone.infer(obs), expected(obs))
    with pytest.raises(RemoteError, match="cannot connect"):
        RemotePolicy("ws://127.0.0.1:1").infer(obs)


def test_a_remote_policy_drives_a_real_metaworld_episode():
    import clap_vla.sim  # noqa: F401  (chooses MuJoCo's GL backend before metaworld imports mujoco)

    pytest.importorskip("metaworld")
    from clap_vla.configs.sim import RolloutConfig
    from clap_vla.serve.server import load_policy
    from clap_vla.sim.rollout import evaluate

    policy, _ = load_policy("noop")  # a factory, called without a simulator: holds the observed pose
    with ServerThread(PolicyServer(policy, ServeConfig(policy="noop", port=0))) as s:
        cfg = RolloutConfig(env="metaworld", tasks="reach-v3", episodes=1, workers=1, max_steps=6, size=32)
        res = evaluate(cfg, policy=RemotePolicy(s.url))
        assert s.server.stats["requests"] == 6 and s.server.stats["bad_requests"] == 0  # noop chunks are 1 row
    assert res["tasks"]["reach-v3"]["episodes"] == 1


@pytest.mark.parametrize("spec", ["random", "noop"])
def test_baseline_metadata_has_the_documented_policy_fields(spec):
    """docs/serving.md lists horizon and camera in `policy`: a baseline reports 1 row and no camera."""
    from clap_vla.serve.server import load_policy

    policy, info = load_policy(spec)
    assert info["horizon"] == 1 and "camera" in info and info["camera"] is None
    with ServerThread(PolicyServer(policy, ServeConfig(policy=spec, port=0))) as s, PolicyClient(s.url) as c:
        assert c.metadata["policy"]["horizon"] == 1 and c.metadata["action"]["horizon"] == 1
        assert c.metadata["policy"]["camera"] is None
        state = np.array([0.1, 0.5, 0.2, 0, 0, 0, 0], np.float32)
        obs = {"images": {"main": np.zeros((8, 8, 3), np.uint8)}, "state": state, "instruction": "x", "robot_type": "t"}
        assert c.infer(obs)["actions"].shape == (1, 7)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="port must be in"):
        ServeConfig(policy="random", port=70000)
    with pytest.raises(ConfigError, match="expert"):
        ServeConfig(policy="expert")
    with pytest.raises(ConfigError, match="max_image_side"):
        ServeConfig(policy="random", max_image_side=0)


def test_cli_serves_until_sigterm(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLAP_API_KEY": "env-key"}
    proc = subprocess.Popen([sys.executable, "-m", "clap_vla", "serve", "--policy", "noop", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving noop on ws://127.0.0.1:") and "API key required" in line, line
        url = line.split()[3]
        with pytest.raises(RemoteError, match="HTTP 401"):
            PolicyClient(url)
        with PolicyClient(url, api_key="env-key") as c:
            obs = make_obs(2)
            np.testing.assert_array_equal(c.infer(obs)["actions"], obs["state"][None])  # noop holds the state
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped after 1 requests" in out


@pytest.fixture(scope="module")
def ntp_artifact(tmp_path_factory):
    ntp_stage = pytest.importorskip("tests.train.test_ntp_stage")
    from clap_vla.cli import main

    root = ntp_stage.setup.__wrapped__(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLAP_CACHE_DIR", str(root / "cache"))
        assert main(ntp_stage._args(root, root / "ntp", 2)) == 0
    return root


def test_a_trained_artifact_served_by_path(ntp_artifact):
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.serve.server import load_policy

    art = ntp_artifact / "ntp"
    policy, info = load_policy(str(art))
    assert info["artifact"]["stage"] == "ntp" and info["horizon"] == 8
    ds = RobotDataset(ntp_artifact / "robot")
    state = ds.episode_columns(0, ["observation.state"])["observation.state"][0].astype(np.float32)
    frame = ds.frames(0, "observation.images.main", [0])[0]
    obs = {"images": {"main": frame}, "state": state, "instruction": ds.tasks[0], "robot_type": "toy"}
    with ServerThread(PolicyServer(policy, ServeConfig(policy=str(art), port=0))) as s, PolicyClient(s.url) as c:
        assert c.metadata["policy"]["artifact"]["stage"] == "ntp" and c.metadata["action"]["horizon"] == 8
        reply = c.infer(obs)
        assert reply["actions"].shape == (8, 7) and reply["actions"].dtype == np.float32
        assert np.isfinite(reply["actions"]).all()
        assert reply["server_timing"]["infer_ms"] > 0 and "encode_ms" in reply["policy_timing"]
        with pytest.raises(BadRequest, match="state"):
            c.infer({**obs, "state": np.zeros(6, np.float32)})
        assert c.infer(obs)["actions"].shape == (8, 7)


def test_rollout_policy_spec_ws_url_gives_a_lazy_remote_policy():
    from clap_vla.serve.client import RemotePolicy
    from clap_vla.sim.policies import load_factory

    pol = load_factory("ws://127.0.0.1:9")  # nothing listens there: construction must not connect
    assert isinstance(pol, RemotePolicy) and pol.url == "ws://127.0.0.1:9"
