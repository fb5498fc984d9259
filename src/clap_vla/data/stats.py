"""Feature statistics in LeRobot's layout: min, max, mean, std, count, q01, q10, q50, q90, q99.

Vector features: exact statistics over every frame (population std). Video features: per-channel
statistics of a deterministic sample of frames, scaled to [0, 1] and shaped (3, 1, 1) as LeRobot
stores them; dataset-level image stats aggregate the per-episode ones (count-weighted mean and
quantiles, parallel-variance std), as LeRobot's `aggregate_stats` does.
"""

from __future__ import annotations

import numpy as np

from clap_vla.data.lerobot_format import QUANTILES


def _qname(q: float) -> str:
    return f"q{round(q * 100):02d}"


def vector_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """x: (N,) or (N, n) -> stats with shape (n,) ((1,) for scalars); count is [N]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    for q, v in zip(QUANTILES, np.quantile(x, QUANTILES, axis=0), strict=True):
        out[_qname(q)] = v
    return out


def sample_frame_indices(length: int) -> np.ndarray:
    """LeRobot's deterministic frame sample for image stats: n = min(len, max(100, len**0.75)), <= 10000."""
    n = min(length, max(100, int(length**0.75)), 10000)
    return np.round(np.linspace(0, length - 1, n)).astype(np.int64)


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """frames: (N, h, w, 3) uint8 -> per-channel stats in [0, 1], each shaped (3, 1, 1).

    Large frames are subsampled by an integer stride (max side >= 300 -> stride max/150), as LeRobot
    does. Statistics come from a 256-bin histogram per channel: exact for uint8 data (quantiles use
    numpy's linear interpolation) at O(pixels) time and O(1) extra memory.
    """
    h, w = frames.shape[1:3]
    step = max(h, w) // 150 if max(h, w) >= 300 else 1
    f = frames[:, ::step, ::step]
    counts = np.stack([np.bincount(f[..., c].ravel(), minlength=256) for c in range(f.shape[-1])])  # (C, 256)
    levels = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum(1)
    mean = counts @ levels / n
    var = np.maximum(counts @ levels**2 / n - mean**2, 0.0)
    cdf = np.cumsum(counts, 1)
    out = {
        "min": np.array([levels[np.nonzero(c)[0][0]] for c in counts]),
        "max": np.array([levels[np.nonzero(c)[0][-1]] for c in counts]),
        "mean": mean,
        "std": np.sqrt(var),
    }
    for q in QUANTILES:
        pos = q * (n - 1)
        lo, hi = np.floor(pos).astype(np.int64), np.ceil(pos).astype(np.int64)
        v_lo = np.array([levels[np.searchsorted(c, k, side="right")] for c, k in zip(cdf, lo, strict=True)])
        v_hi = np.array([levels[np.searchsorted(c, k, side="right")] for c, k in zip(cdf, hi, strict=True)])
        out[_qname(q)] = v_lo + (pos - lo) * (v_hi - v_lo)
    out = {k: v.reshape(-1, 1, 1) for k, v in out.items()}
    out["count"] = np.array([len(frames)])
    return out


def aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode stats of one feature (LeRobot's aggregation rule)."""
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    w = counts / counts.sum()

    def wsum(key: str) -> np.ndarray:
        return sum(wi * s[key] for wi, s in zip(w, per_episode, strict=True))

    mean = wsum("mean")
    var = sum(wi * (s["std"] ** 2 + (s["mean"] - mean) ** 2) for wi, s in zip(w, per_episode, strict=True))
    out = {
        "min": np.min([s["min"] for s in per_episode], axis=0),
        "max": np.max([s["max"] for s in per_episode], axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(counts.sum())]),
    }
    for q in QUANTILES:
        out[_qname(q)] = wsum(_qname(q))
    return out


def to_json(stats: dict[str, np.ndarray]) -> dict[str, list]:
    """Plain lists in LeRobot's stat order (count as ints)."""
    order = ["min", "max", "mean", "std", "count", *(_qname(q) for q in QUANTILES)]
    return {
        k: (np.asarray(stats[k]).astype(np.int64) if k == "count" else np.asarray(stats[k], np.float64)).tolist()
        for k in order
        if k in stats
    }
