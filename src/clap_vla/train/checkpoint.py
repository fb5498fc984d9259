"""Artifact directories and resumable training checkpoints (ARCHITECTURE.md, "Data flow").

    run_dir/                    the artifact a later stage reads
      config.json               the stage's full config
      model.safetensors         weights (the EMA weights when EMA is on)
      meta.json                 parents (path + content hash), code version, step, metrics
      norm_stats*.json          written by the stage when it consumes actions
      metrics.jsonl, tb/        training metrics
      checkpoint/               training state: model.safetensors, ema.safetensors, optimizer.pt,
                                state.json (step, RNG states); replaced atomically as a whole

Every file is written atomically (temp file or temp dir + fsync + rename), so a run killed at any
moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# The artifact's own file names and `parent_entry` live in clap_vla/artifacts.py; re-exported here
# for the training loop and the stages that name them `ck.*`.
from clap_vla.artifacts import CONFIG, META, MODEL, parent_entry  # noqa: F401
from clap_vla.data.atomic import atomic_directory, atomic_write_bytes, atomic_write_text
from clap_vla.errors import ClapError

EMA, OPTIMIZER, STATE, CHECKPOINT = "ema.safetensors", "optimizer.pt", "state.json", "checkpoint"


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("clap-vla")
    except PackageNotFoundError:
        v = "unknown"
    head = Path(__file__).resolve().parents[3] / ".git" / "HEAD"
    try:  # the commit too, when running from a git checkout
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        v = f"{v}+g{ref[:10]}"
    except OSError:
        pass
    return v


ALIASES_KEY = "clap_aliases"


def state_dict_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes. Entries that share storage with an earlier one (tied weights, e.g. a
    language model's input embeddings and output head) are stored once and listed in the header
    metadata as aliases, which `load_weights` restores."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for k, v in sd.items():
        key = (v.device.type, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        tensors[k] = v.detach().cpu().contiguous()
    return save(tensors, metadata={ALIASES_KEY: json.dumps(aliases)} if aliases else None)


def save_weights(path: Path, sd: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, state_dict_bytes(sd))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ClapError(f"{path}: no weights file here")
    from safetensors import safe_open

    out = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get(ALIASES_KEY, "{}"))
    for k, src in aliases.items():
        out[k] = out[src]
    return out


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ClapError(f"{path}: not found (is this an artifact directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ClapError(f"{path}: invalid JSON ({e})") from e


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np.random.get_state()[0], np.random.get_state()[1].tolist(), *np.random.get_state()[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(s["torch"], dtype=torch.uint8))
    n = s["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = s["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    ema: dict[str, torch.Tensor] | None = None,
    extra_state: dict[str, Any] | None = None,
) -> None:
    with atomic_directory(run_dir / CHECKPOINT, overwrite=True) as tmp:
        (tmp / MODEL).write_bytes(state_dict_bytes(model.state_dict()))
        if ema is not None:
            (tmp / EMA).write_bytes(state_dict_bytes(ema))
        buf = io.BytesIO()
        torch.save(optimizer.state_dict(), buf)
        (tmp / OPTIMIZER).write_bytes(buf.getvalue())
        state = {"step": step, "rng": rng_state(), **(extra_state or {})}
        (tmp / STATE).write_text(json.dumps(state))


def load_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Restore model, optimizer and RNG state; return (step, ema weights or None, state dict)."""
    ckpt = run_dir / CHECKPOINT
    state = read_json(ckpt / STATE)
    missing, unexpected = model.load_state_dict(load_weights(ckpt / MODEL), strict=False)
    if missing or unexpected:
        raise ClapError(f"{ckpt}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    optimizer.load_state_dict(torch.load(ckpt / OPTIMIZER, map_location="cpu", weights_only=True))
    ema = load_weights(ckpt / EMA) if (ckpt / EMA).exists() else None
    set_rng_state(state["rng"])
    return int(state["step"]), ema, state
