"""Config of `clap serve`: a websocket policy server speaking openpi's client protocol (docs/serving.md)."""

from __future__ import annotations

import string
from dataclasses import dataclass

from clap_vla.errors import ConfigError

# Printable ASCII without whitespace: the key travels in an HTTP header (`Authorization: Api-Key <key>`).
_KEY_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation)


@dataclass(frozen=True)
class ServeConfig:
    """Serve one policy to any number of websocket clients (openpi's `WebsocketClientPolicy` unchanged)."""

    policy: str
    """A trained policy artifact directory (e.g. outputs/ntp) | random | noop | package.module:name (an
    object with infer(observation), or a factory called once as (None, seed): it gets no simulator)."""
    host: str = "127.0.0.1"
    """Interface to bind. The default serves this machine only; 0.0.0.0 exposes the policy to the network
    (set an API key then)."""
    port: int = 8000
    """TCP port (openpi's default); 0 picks a free one."""
    api_key: str | None = None
    """Clients must send `Authorization: Api-Key <key>` (openpi's `api_key=`). Default: the CLAP_API_KEY
    environment variable, else no key (kept out of the default so --help never prints it)."""
    max_message_mb: float = 16.0
    """Largest request accepted; a larger one (up to 4x this) gets an error reply, beyond that the
    connection is dropped with close code 1009 (message too big)."""
    max_array_elements: int = 1 << 24
    """Largest array (elements) a request may carry."""
    max_image_side: int = 1024
    """Largest camera image height or width."""
    max_cameras: int = 8
    """Most cameras in one observation."""
    tracebacks: bool = False
    """On an internal (policy) error, send the server's full traceback to the client as openpi does.
    Off by default: it discloses server paths and code; the server log always has it."""
    seed: int = 0
    """Seed of a factory policy (e.g. random)."""

    def __post_init__(self) -> None:
        if not self.policy:
            raise ConfigError("policy must name an artifact directory, random, noop or package.module:name")
        if self.policy == "expert":
            raise ConfigError(
                "policy 'expert' reads the simulator's state, which a server does not have: serve a trained "
                "artifact, random, noop or package.module:name"
            )
        if not self.host:
            raise ConfigError("host must be an interface address such as 127.0.0.1 or 0.0.0.0, got ''")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and (not self.api_key or not set(self.api_key) <= _KEY_CHARS):
            raise ConfigError("api_key must be non-empty printable ASCII without spaces (it is sent in an HTTP header)")
        if not self.max_message_mb > 0:
            raise ConfigError(f"max_message_mb must be > 0, got {self.max_message_mb}")
        for name in ("max_array_elements", "max_image_side", "max_cameras"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * (1 << 20))


__all__ = ["ServeConfig"]
