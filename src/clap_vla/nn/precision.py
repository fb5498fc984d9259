"""Compute precision per device: bf16 where the hardware multiplies bf16 natively, fp32 elsewhere.

bf16 autocast speeds up matrix products on GPUs with bf16 support and on CPUs with AVX512-BF16 or
AMX tiles. Elsewhere PyTorch emulates bf16: on an AVX2-only CPU (AMD EPYC, one thread) a
(256 x 1024) @ (1024 x 256) product took 108 ms in bf16 against 1.8 ms in fp32, 61x slower
(benchmarks/bench_precision.py -> benchmarks/results/precision.json).
`auto` therefore resolves per device; an explicit `bf16` on a device without it is kept, with a
warning.
"""

from __future__ import annotations

import functools
import warnings

import torch

from clap_vla.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether bf16 matrix products run natively (not emulated) on this kind of device."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
        return any(bool(getattr(torch.cpu, n)()) for n in names if hasattr(torch.cpu, n))
    return False


def resolve(precision: str, device: torch.device | str) -> str:
    """`auto` -> bf16 where native, else fp32; `fp32` / `bf16` as given (bf16 warns where emulated)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "auto":
        return "bf16" if native_bf16(kind) else "fp32"
    if precision == "bf16" and not native_bf16(kind):
        warnings.warn(
            f"precision bf16 on a {kind} device without native bf16 matrix units (AVX512-BF16 / AMX on CPUs): "
            "PyTorch emulates it, many times slower than fp32; use precision auto or fp32",
            stacklevel=2,
        )
    return precision


__all__ = ["PRECISIONS", "native_bf16", "resolve"]
