"""The policy server: openpi's websocket protocol, one model shared by every client.

Per connection (as openpi's `WebsocketPolicyServer`): the server sends its metadata map first, then
answers each binary observation message with `{"actions": (k, n*7) float32, "server_timing": {...}}`.

Errors, where we depart from openpi (which answers any exception with a traceback text frame and
closes the connection with 1011):

* a refused request (malformed msgpack, a dtype or size over the limits, an observation that breaks
  the contract, or a `ClapError` the policy raises about its input) is answered with a text frame
  `"bad request: <what and where>"` and the connection stays open. openpi's client raises
  `RuntimeError("Error in inference server:\\n" + text)` for any text frame, so the message reaches
  the caller unchanged and its next `infer` works;
* a failure inside the policy is answered as openpi does: a text frame (`internal server error: ...`,
  the full traceback with `--tracebacks`), then close code 1011. Other clients are never affected.

Inference runs in a worker thread under one asyncio lock (FIFO): the event loop keeps reading,
decoding and answering pings for every client while the model works on one request at a time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from clap_vla.artifacts import META
from clap_vla.configs.serve import ServeConfig
from clap_vla.errors import ClapError, ConfigError
from clap_vla.serve.protocol import BAD_REQUEST, PROTOCOL, PROTOCOL_VERSION, RequestError, packb, unpackb
from clap_vla.serve.validate import ARM_DIM, REQUIRED, STATE_DIMS, check_actions, validate_observation
from clap_vla.types import STATE, Observation, Policy

logger = logging.getLogger(__name__)

# A message up to this many times --max-message-mb is still read, so its sender gets a readable error
# and keeps its connection; a larger one is dropped by websockets (close 1009) rather than buffered.
TRANSPORT_SLACK = 4
SHUTDOWN_GRACE_S = 30.0  # how long requests already being served may finish after SIGINT/SIGTERM


def load_policy(spec: str, seed: int = 0) -> tuple[Policy, dict[str, Any]]:
    """A policy spec (as `clap eval rollout --policy`) -> (policy object, its description for the metadata).
    A factory is called once as (None, seed): a server has no simulator to hand it."""
    from clap_vla.sim.policies import is_policy_object, load_factory

    obj = load_factory(spec)
    if is_policy_object(obj):
        policy = obj
    else:
        try:
            policy = obj(None, seed)
        except Exception as e:
            raise ConfigError(
                f"policy {spec!r} is a factory (env, seed) and failed without a simulator (env=None): "
                f"{type(e).__name__}: {e}"
            ) from e
        if not callable(getattr(policy, "infer", None)):
            raise ConfigError(f"policy {spec!r}: its factory returned {type(policy).__name__}, which has no infer()")
    return policy, describe_policy(spec, policy)


def describe_policy(spec: str, policy: Policy) -> dict[str, Any]:
    """Name, class, chunk length (`horizon`), camera and, for an artifact, its stage, step and robot types.
    `horizon` and `camera` are always present: None when the policy does not say (a user's policy
    without those attributes) or, for `camera`, reads no image (the baselines)."""
    info: dict[str, Any] = {"spec": spec, "class": type(policy).__qualname__}
    act_vae_cfg = getattr(getattr(policy, "act_vae", None), "cfg", None)
    horizon = getattr(policy, "horizon", None) or getattr(act_vae_cfg, "horizon", None)
    info["horizon"] = horizon if isinstance(horizon, int) else None
    camera = getattr(policy, "camera", None)
    info["camera"] = camera if isinstance(camera, str) else None
    meta_path = Path(spec) / META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        info["artifact"] = {
            "name": Path(spec).resolve().name,
            "stage": meta.get("stage"),
            "step": meta.get("step"),
            "code_version": meta.get("code_version"),
            "robot_types": [e.get("robot_type") for e in meta.get("norm_stats") or []],
        }
    return info


def server_metadata(cfg: ServeConfig, policy_info: dict[str, Any]) -> dict[str, Any]:
    """The first message of every connection (openpi's `get_server_metadata()`)."""
    from clap_vla import __version__

    return {
        "server": "clap-vla",
        "version": __version__,
        "protocol": PROTOCOL,
        "protocol_version": PROTOCOL_VERSION,
        "policy": policy_info,
        "observation": {
            "keys": list(REQUIRED),
            "images": f"camera -> (h, w, 3) uint8, 1 <= h, w <= {cfg.max_image_side}, 1 to {cfg.max_cameras} cameras",
            "state_dims": list(STATE_DIMS),
        },
        "action": {
            "shape": "(k, n*7): k steps of n arms",
            "arm_dim": ARM_DIM,
            "horizon": policy_info.get("horizon"),
            "layout": "per arm absolute end-effector target [x, y, z, roll, pitch, yaw] and gripper command",
        },
        "limits": {
            "max_message_bytes": cfg.max_message_bytes,
            "max_array_elements": cfg.max_array_elements,
            "max_image_side": cfg.max_image_side,
            "max_cameras": cfg.max_cameras,
        },
    }


class PolicyServer:
    """Serves `policy` with the limits and API key of `cfg` (its `policy` string is not read here)."""

    def __init__(self, policy: Policy, cfg: ServeConfig, metadata: dict[str, Any] | None = None) -> None:
        self.policy, self.cfg = policy, cfg
        self.metadata = metadata if metadata is not None else server_metadata(cfg, describe_policy(cfg.policy, policy))
        self._metadata_msg = packb(self.metadata)  # fails here, not per connection, if it is not packable
        self.port: int | None = None  # the bound port (cfg.port may be 0)
        self.stats = {"connections": 0, "requests": 0, "bad_requests": 0, "internal_errors": 0}
        self._inflight = 0
        self._stopping = False
        self._lock: asyncio.Lock | None = None

    async def run(
        self, stop: Awaitable[Any] | None = None, ready: Callable[[PolicyServer], None] | None = None
    ) -> None:
        """Serve until `stop` completes (forever without it), then drain: refuse new connections and
        requests, let those in flight finish (up to SHUTDOWN_GRACE_S), close the rest with 1001."""
        from websockets.asyncio.server import serve

        loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        async with serve(
            self._handle,
            self.cfg.host,
            self.cfg.port,
            compression=None,  # images are incompressible noise to deflate; openpi turns it off too
            max_size=TRANSPORT_SLACK * self.cfg.max_message_bytes,
            process_request=self._check_http,
            server_header="clap-vla",
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready(self)
            await (stop if stop is not None else loop.create_future())
            self._stopping = True
            deadline = loop.time() + SHUTDOWN_GRACE_S
            while self._inflight and loop.time() < deadline:
                await asyncio.sleep(0.01)
        logger.info("server stopped: %s", self.stats)

    def _check_http(self, connection: Any, request: Any) -> Any:
        """Before the websocket upgrade: health check, shutdown, API key (openpi's client sends
        `Authorization: Api-Key <key>`); 401 without the header, 403 with a wrong key."""
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self._stopping:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down\n")
        if self.cfg.api_key is None:
            return None
        scheme, _, key = (request.headers.get("Authorization") or "").partition(" ")
        if scheme != "Api-Key":
            return connection.respond(
                HTTPStatus.UNAUTHORIZED, "this server needs the header Authorization: Api-Key <key>\n"
            )
        if not hmac.compare_digest(key.encode(), self.cfg.api_key.encode()):  # constant time: no timing oracle
            logger.warning("wrong API key from %s", connection.remote_address)
            return connection.respond(HTTPStatus.FORBIDDEN, "wrong API key\n")
        return None

    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.frames import CloseCode

        peer = ws.remote_address
        self.stats["connections"] += 1
        logger.info("connection from %s", peer)
        try:
            await ws.send(self._metadata_msg)
            prev_total_ms = None
            async for message in ws:
                start = time.perf_counter()
                if self._stopping:
                    await ws.close(CloseCode.GOING_AWAY, "the server is shutting down")
                    break
                self._inflight += 1
                try:
                    reply, fatal = await self._respond(message, prev_total_ms)
                    await ws.send(reply)
                finally:
                    self._inflight -= 1
                if fatal:
                    await ws.close(CloseCode.INTERNAL_ERROR, "internal server error; the message is in the last frame")
                    break
                prev_total_ms = (time.perf_counter() - start) * 1000
        except ConnectionClosed:
            pass
        finally:
            logger.info("connection from %s closed", peer)

    async def _respond(self, message: bytes | str, prev_total_ms: float | None) -> tuple[bytes | str, bool]:
        """(reply frame, whether to close the connection after it)."""
        self.stats["requests"] += 1
        try:
            t0 = time.perf_counter()
            obs = await asyncio.to_thread(self._decode, message)
            t1 = time.perf_counter()
            async with self._lock:
                t2 = time.perf_counter()
                actions, extras = await asyncio.to_thread(self._infer, obs)
                t3 = time.perf_counter()
        except RequestError as e:
            self.stats["bad_requests"] += 1
            logger.info("bad request: %s", e)
            return BAD_REQUEST + str(e), False
        except Exception as e:
            self.stats["internal_errors"] += 1
            logger.exception("the policy failed")
            text = traceback.format_exc() if self.cfg.tracebacks else f"internal server error: {type(e).__name__}: {e}"
            return text, True
        timing = {"infer_ms": (t3 - t2) * 1000, "decode_ms": (t1 - t0) * 1000, "queue_ms": (t2 - t1) * 1000}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms  # openpi's: the previous request's full turnaround
        return packb({"actions": actions, "server_timing": timing, **extras}), False

    def _decode(self, message: bytes | str) -> Observation:
        if isinstance(message, str):
            raise RequestError("got a text frame; send the observation as a binary msgpack frame")
        obs = unpackb(message, self.cfg.max_message_bytes, self.cfg.max_array_elements)
        return validate_observation(obs, max_image_side=self.cfg.max_image_side, max_cameras=self.cfg.max_cameras)

    def _infer(self, obs: Observation) -> tuple[Any, dict[str, Any]]:
        """Runs in a worker thread holding the lock, so the policy's `last_*` attributes are this request's."""
        try:
            out = self.policy.infer(obs)
        except ClapError as e:  # by the house convention a message about the input, e.g. a missing camera
            raise RequestError(f"the policy refused the observation: {e}") from e
        actions = check_actions(out, len(obs[STATE]))
        extras: dict[str, Any] = {}
        timing = getattr(self.policy, "last_timing", None)
        if isinstance(timing, dict) and timing:
            extras["policy_timing"] = {f"{k.removesuffix('_s')}_ms": float(v) * 1000 for k, v in timing.items()}
        subtask = getattr(self.policy, "last_subtask", None)
        if isinstance(subtask, str) and subtask:
            extras["subtask"] = subtask  # CLAP-NTP writes the current subtask before its action tokens
        return actions, extras


class ServerThread:
    """A `PolicyServer` on its own event loop in a daemon thread (tests, benchmarks, notebooks):

    with ServerThread(PolicyServer(policy, ServeConfig(policy="mine", port=0))) as s:
        PolicyClient(s.url).infer(obs)
    """

    def __init__(self, server: PolicyServer, timeout: float = 10.0) -> None:
        self.server, self.timeout = server, timeout
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._main, name="clap-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://{self.server.cfg.host}:{self.server.port}"

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = self._loop.create_future()
            await self.server.run(self._stop, ready=lambda _: self._ready.set())

        try:
            asyncio.run(main())
        except BaseException as e:  # e.g. the port is taken: re-raised in the caller's thread
            self._error = e
            self._ready.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self.timeout):
            raise TimeoutError(f"the policy server did not start within {self.timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(SHUTDOWN_GRACE_S + 5)


def serve_forever(server: PolicyServer, ready: Callable[[PolicyServer], None] | None = None) -> None:
    """Run in the main thread until SIGINT or SIGTERM, then shut down gracefully."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        await server.run(stop, ready)

    asyncio.run(main())


__all__ = ["PolicyServer", "ServerThread", "describe_policy", "load_policy", "serve_forever", "server_metadata"]
