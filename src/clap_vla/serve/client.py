"""A synchronous client for `clap serve` (or any openpi policy server), and a rollout policy backed by one.

    client = PolicyClient("127.0.0.1", 8000)        # or PolicyClient("ws://host:8000", api_key=...)
    client.metadata                                 # the server's first message
    client.infer(observation)["actions"]            # (k, n*7) float32

`RemotePolicy` is a rollout policy object (`infer(observation) -> actions`) that connects on first use,
so it can travel to rollout worker processes: `clap eval rollout --policy clap_vla.serve.client:remote`
uses the module-level `remote`, which reads the server address from CLAP_POLICY_SERVER (default
ws://127.0.0.1:8000) and the key from CLAP_API_KEY.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from clap_vla.errors import ClapError
from clap_vla.serve.protocol import BAD_REQUEST, packb, unpackb
from clap_vla.types import Observation

SERVER_ENV, API_KEY_ENV = "CLAP_POLICY_SERVER", "CLAP_API_KEY"
DEFAULT_URL = "ws://127.0.0.1:8000"


class RemoteError(ClapError):
    """The server could not be reached, refused the connection, or failed."""


class BadRequest(RemoteError):
    """The server refused this request (the message says why); the connection is still usable."""


class ServerError(RemoteError):
    """The policy failed on the server, which then closed the connection (openpi's behaviour)."""


def _url(host: str, port: int | None) -> str:
    # As openpi's WebsocketClientPolicy: a ws:// or wss:// host is a URL, and the port is appended if given.
    url = host if host.startswith("ws") else f"ws://{host}"
    return url if port is None else f"{url}:{port}"


class PolicyClient:
    """One websocket connection to a policy server; not thread-safe (one client per thread)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None, timeout: float = 60.0
    ) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        self.url, self.timeout = _url(host, port), timeout
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._stack = contextlib.ExitStack()  # websockets >= 17.1 wants connect() entered as a context
        try:
            self._ws = self._stack.enter_context(
                connect(self.url, compression=None, max_size=None, additional_headers=headers, open_timeout=timeout)
            )
        except InvalidStatus as e:
            body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
            raise RemoteError(f"{self.url} refused the connection: HTTP {e.response.status_code} {body}") from None
        except (OSError, TimeoutError) as e:
            raise RemoteError(f"cannot connect to a policy server at {self.url}: {e}") from None
        try:
            self.metadata: dict[str, Any] = unpackb(self._ws.recv(timeout))  # openpi servers send it first
        except BaseException:
            self._stack.close()
            raise

    def infer(self, observation: Observation) -> dict[str, Any]:
        """Send one observation; the reply map ({"actions", "server_timing", ...})."""
        self._ws.send(packb(observation))
        reply = self._ws.recv(self.timeout)
        if isinstance(reply, str):  # the protocol's error frame (binary frames carry replies)
            if reply.startswith(BAD_REQUEST):
                raise BadRequest(reply[len(BAD_REQUEST) :])
            raise ServerError(f"{self.url}: {reply}")
        return unpackb(reply)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemotePolicy:
    """A rollout policy served elsewhere: `infer(observation) -> (k, n*7)` float32. Connects on the first
    `infer` (url default: $CLAP_POLICY_SERVER or ws://127.0.0.1:8000; key default: $CLAP_API_KEY) and
    reconnects once if the server closed the connection."""

    def __init__(self, url: str | None = None, api_key: str | None = None) -> None:
        self.url, self.api_key = url, api_key
        self._client: PolicyClient | None = None

    def _connect(self) -> PolicyClient:
        url = self.url or os.environ.get(SERVER_ENV) or DEFAULT_URL
        return PolicyClient(url, api_key=self.api_key or os.environ.get(API_KEY_ENV))

    def infer(self, observation: Observation) -> np.ndarray:
        from websockets.exceptions import ConnectionClosed

        if self._client is None:
            self._client = self._connect()
        try:
            reply = self._client.infer(observation)
        except ConnectionClosed:  # e.g. the server restarted between episodes
            self._client = self._connect()
            reply = self._client.infer(observation)
        except ServerError:
            self._client = None  # the server closed this connection; the next call opens a new one
            raise
        return np.asarray(reply["actions"], dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "api_key": self.api_key, "_client": None}  # a socket does not cross processes


remote = RemotePolicy()
"""`--policy clap_vla.serve.client:remote`: the server at $CLAP_POLICY_SERVER, one connection per process."""


__all__ = ["BadRequest", "PolicyClient", "RemoteError", "RemotePolicy", "ServerError", "remote"]
