"""Load test of `clap serve`: N concurrent clients x M requests each, every request a realistic
observation (one 128x128 camera, 7-D state). The server is the real CLI in its own process; the
clients are threads here, each with its own connection. Reports errors (must be 0), requests/s and
round-trip p50/p99 ms, and the server's own infer time, for a trivial policy (noop: isolates the
protocol's cost) and optionally a trained artifact (the model's cost, serialised by the server's lock).

    python benchmarks/bench_serve.py --out benchmarks/results/serve.json [--artifact outputs/ntp_mt10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from clap_vla.serve.client import PolicyClient
from clap_vla.serve.protocol import packb


def start_server(policy: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("CLAP_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clap_vla", "serve", "--policy", policy, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()  # "serving <policy> on ws://127.0.0.1:PORT (...)"
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, line.split()[3]


def observation(rng: np.random.Generator, camera: str, size: int, robot_type: str = "metaworld") -> dict:
    return {
        "images": {camera: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)},
        "state": rng.uniform(-0.3, 0.3, 7).astype(np.float32),
        "instruction": "open the drawer",
        "robot_type": robot_type,
    }


def load(url: str, clients: int, requests: int, size: int) -> dict:
    with PolicyClient(url) as probe:
        camera = probe.metadata["policy"].get("camera") or "main"
        robot = next(iter(probe.metadata["policy"].get("artifact", {}).get("robot_types") or []), None) or "metaworld"
        probe.infer(observation(np.random.default_rng(0), camera, size, robot))  # warm-up (first call loads lazily)
    rtts: list[float] = []
    infer_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker(k: int) -> None:
        rng = np.random.default_rng(k + 1)
        try:
            with PolicyClient(url) as c:
                barrier.wait()
                for _ in range(requests):
                    obs = observation(rng, camera, size, robot)
                    t = time.perf_counter()
                    reply = c.infer(obs)
                    dt = (time.perf_counter() - t) * 1000
                    a = reply["actions"]
                    ok = a.ndim == 2 and a.shape[1] == 7 and np.isfinite(a).all()
                    with lock:
                        rtts.append(dt)
                        infer_ms.append(reply["server_timing"]["infer_ms"])
                        if not ok:
                            errors.append(f"client {k}: bad actions {a.shape}")
        except Exception as e:
            with lock:
                errors.append(f"client {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.percentile(rtts, [50, 99]) if rtts else [float("nan")] * 2
    return {
        "clients": clients,
        "requests_per_client": requests,
        "requests": len(rtts),
        "errors": len(errors),
        "error_examples": errors[:3],
        "seconds": wall,
        "requests_per_s": len(rtts) / wall,
        "rtt_p50_ms": float(q[0]),
        "rtt_p99_ms": float(q[1]),
        "server_infer_p50_ms": statistics.median(infer_ms) if infer_ms else None,
        "request_bytes": len(packb(observation(np.random.default_rng(0), camera, size))),
    }


def bench(policy: str, clients: int, requests: int, size: int) -> dict:
    proc, url = start_server(policy)
    try:
        t = time.perf_counter()
        result = {"policy": policy, **load(url, clients, requests, size)}
        print(f"{policy}: {result['requests']} requests in {time.perf_counter() - t:.1f} s, {result['errors']} errors, "
              f"{result['requests_per_s']:.0f} req/s, p50 {result['rtt_p50_ms']:.1f} ms, "
              f"p99 {result['rtt_p99_ms']:.1f} ms")  # fmt: skip
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=100, help="per client")
    p.add_argument("--size", type=int, default=128, help="camera image side")
    p.add_argument("--artifact", type=Path, help="also serve this trained policy artifact")
    p.add_argument("--artifact-clients", type=int, default=4)
    p.add_argument("--artifact-requests", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    args = p.parse_args()

    runs = [bench("noop", 1, args.requests, args.size), bench("noop", args.clients, args.requests, args.size)]
    if args.artifact is not None:
        runs.append(bench(str(args.artifact), 1, args.artifact_requests, args.size))
        runs.append(bench(str(args.artifact), args.artifact_clients, args.artifact_requests, args.size))
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"websockets": version("websockets"), "msgpack": version("msgpack"), "numpy": np.__version__},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "note": "server in its own process (the real CLI), clients as threads of one process, localhost; "
        "the machine's 2 cores are shared with a training job, so absolute numbers are pessimistic",
        "image_size": args.size,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    if any(r["errors"] for r in runs):
        raise SystemExit("errors during the load test: " + "; ".join(e for r in runs for e in r["error_examples"]))


if __name__ == "__main__":
    main()
