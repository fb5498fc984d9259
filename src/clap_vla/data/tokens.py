"""Token shards: the action tokens of a dataset's (episode, frame) windows, for NTP training.

    <shard>/tokens.parquet   one row per (episode_index, frame_index, arm) of a present arm:
                             codes list<int32> (Nq ids in [0, K)), distance list<float32> (squared
                             distance of each latent to its chosen code: small = confident)
    <shard>/meta.json        kind ("pseudo" from a VD-VAE, "true" from an Act-VAE), the labelling
                             artifact and the Act-VAE it speaks for (path + sha256), num_codes K,
                             codes_per_arm Nq, horizon H, the dataset (path + fingerprint), stride

The window at frame t covers a[t:t+H] (robot) or the frame pair (o_t, o_t+H) (video). Written
atomically as a directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clap_vla.data.atomic import atomic_directory
from clap_vla.errors import DatasetError

TOKENS_FILE, META_FILE = "tokens.parquet", "meta.json"
COLUMNS = ("episode_index", "frame_index", "arm", "codes", "distance")


def write_token_shard(
    out: str | Path,
    episode: np.ndarray,
    frame: np.ndarray,
    codes: np.ndarray,
    distance: np.ndarray,
    meta: dict,
    overwrite: bool = False,
) -> Path:
    """episode, frame (N,); codes (N, A, Nq) with -1 for absent arms; distance (N, A, Nq)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from clap_vla.types import ARM_NAMES

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    present = (codes >= 0).all(-1)  # (N, A)
    n, a = np.nonzero(present)
    table = pa.table(
        {
            "episode_index": pa.array(episode[n].astype(np.int64)),
            "frame_index": pa.array(frame[n].astype(np.int64)),
            "arm": pa.array([ARM_NAMES[i] for i in a]),
            "codes": pa.array(list(codes[n, a].astype(np.int32)), type=pa.list_(pa.int32())),
            "distance": pa.array(list(distance[n, a].astype(np.float32)), type=pa.list_(pa.float32())),
        }
    )
    with atomic_directory(out, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp / TOKENS_FILE)
        (tmp / META_FILE).write_text(json.dumps({**meta, "rows": table.num_rows}, indent=2))
    return out


def read_token_shard(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """-> (columns: episode_index (M,), frame_index (M,), arm (M,) str, codes (M, Nq), distance
    (M, Nq)), meta."""
    import json

    import pyarrow.parquet as pq

    path = Path(path)
    for f in (TOKENS_FILE, META_FILE):
        if not (path / f).exists():
            raise DatasetError(f"{path}: not a token shard (missing {f}); write one with `clap label`")
    meta = json.loads((path / META_FILE).read_text())
    t = pq.read_table(path / TOKENS_FILE)
    missing = [c for c in COLUMNS if c not in t.column_names]
    if missing:
        raise DatasetError(f"{path / TOKENS_FILE}: missing columns {missing}")
    d = t.to_pydict()
    cols = {
        "episode_index": np.asarray(d["episode_index"], np.int64),
        "frame_index": np.asarray(d["frame_index"], np.int64),
        "arm": np.asarray(d["arm"]),
        "codes": np.asarray(d["codes"], np.int64).reshape(len(d["arm"]), -1),
        "distance": np.asarray(d["distance"], np.float32).reshape(len(d["arm"]), -1),
    }
    nq, k = meta.get("codes_per_arm"), meta.get("num_codes")
    if len(cols["codes"]) and (cols["codes"].shape[1] != nq or cols["codes"].min() < 0 or cols["codes"].max() >= k):
        raise DatasetError(f"{path}: codes do not fit meta.json (Nq {nq}, K {k})")
    return cols, meta
