"""`clap serve`: load the policy once, then serve it until SIGINT/SIGTERM (docs/serving.md)."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import sys

from clap_vla.configs.serve import ServeConfig

API_KEY_ENV = "CLAP_API_KEY"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(cfg: ServeConfig) -> int:
    from clap_vla.serve.server import PolicyServer, load_policy, serve_forever, server_metadata

    if cfg.api_key is None and os.environ.get(API_KEY_ENV):
        cfg = dataclasses.replace(cfg, api_key=os.environ[API_KEY_ENV])
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.api_key is None and not _is_loopback(cfg.host):
        print(f"warning: serving on {cfg.host} without an API key: anyone who can reach it can query the policy "
              f"(set --api-key or {API_KEY_ENV})", file=sys.stderr)  # fmt: skip
    policy, info = load_policy(cfg.policy, cfg.seed)
    server = PolicyServer(policy, cfg, server_metadata(cfg, info))

    def ready(s: PolicyServer) -> None:
        auth = "API key required" if cfg.api_key else "no API key"
        print(f"serving {cfg.policy} on ws://{cfg.host}:{s.port} ({auth}); Ctrl-C stops", flush=True)

    serve_forever(server, ready)
    print(f"stopped after {server.stats['requests']} requests ({server.stats['bad_requests']} refused, "
          f"{server.stats['internal_errors']} failed)")  # fmt: skip
    return 0
