"""Artifact directories (ARCHITECTURE.md, "Data flow through artifacts"): the names of what a stage
writes, how a stage names its parents, the norm-stats index, and copying the parent Act-VAE.

    <artifact>/
      config.json           the stage's full config
      model.safetensors     weights
      meta.json             parents (path + sha256 of their weights), code version, metrics, norm-stats index
      norm_stats/<k>_<name>/norm_stats.json   one per robot dataset the stage consumed (the index's targets)
      tokenizer/, act_vae/  NTP and CLAP-RF artifacts: the action vocabulary and the Act-VAE that decodes it

Light on purpose (no torch at import): data providers, models, serve and sim read these names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CONFIG, MODEL, META = "config.json", "model.safetensors", "meta.json"
NORM_DIR = "norm_stats"
TOKENIZER_DIR, ACT_VAE_DIR = "tokenizer", "act_vae"


def parent_entry(artifact: str | Path) -> dict[str, str]:
    """How a stage names a parent artifact in its meta.json: resolved path + sha256 of its weights,
    so a later check can tell when the parent was retrained in place."""
    import hashlib

    artifact = Path(artifact).resolve()
    h = hashlib.sha256()
    with open(artifact / MODEL, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(artifact), "sha256": h.hexdigest()}


def save_norm_stats(out: Path, paths, stats) -> list[dict]:
    """One norm_stats.json per input dataset under out/norm_stats/<k>_<name>/; returns the index."""
    from clap_vla.data.normalize import NORM_STATS_FILE

    index = []
    for k, (p, st) in enumerate(zip(paths, stats, strict=True)):
        sub = Path(NORM_DIR) / f"{k}_{Path(p).name}"
        st.save(out / sub)
        index.append({"dataset": str(Path(p).resolve()), "norm_stats": str(sub / NORM_STATS_FILE)})
    return index


def norm_stats_for(artifact: Path, meta: dict, data: Path):
    """The artifact's stats for `data` when it trained on it, else None."""
    from clap_vla.data.normalize import NormStats

    for entry in meta.get("norm_stats") or []:
        if Path(entry["dataset"]) == Path(data).resolve():
            return NormStats.load(artifact / entry["norm_stats"])
    return None


def copy_act_vae(src: Path, out: Path) -> None:
    """Copy the Act-VAE artifact `src` into out/act_vae/ (its decoder turns tokens into chunks)."""
    from clap_vla.data.atomic import atomic_directory

    with atomic_directory(out / ACT_VAE_DIR, overwrite=True) as tmp:
        for name in (CONFIG, MODEL, META):
            if (src / name).exists():
                shutil.copy2(src / name, tmp / name)
        if (src / NORM_DIR).is_dir():  # meta.json's norm-stats index points into it
            shutil.copytree(src / NORM_DIR, tmp / NORM_DIR)
