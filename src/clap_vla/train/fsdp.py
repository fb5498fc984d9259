"""FSDP2 sharding, activation checkpointing and sharded (DCP) checkpoints for the training loop.

`--train.strategy fsdp` shards parameters, gradients and AdamW state over the ranks with PyTorch's
FSDP2 (`torch.distributed.fsdp.fully_shard`): one unit per transformer block of the model (its
`transformer_blocks()`), the rest in one root unit around the loss. Gradients are averaged over
ranks like DDP's, so `global_count` keeps masked means equal to the single-process ones.

Checkpoints of an FSDP run are written with torch.distributed.checkpoint (DCP): every rank writes
its own shards into one directory (a file system all ranks share), and DCP re-slices them on
load, so a run saved by N ranks resumes on M (or in one process). The directory is built under a
temp name by all ranks and renamed into place by rank 0, so a killed save leaves the previous
checkpoint intact. The weights of the artifact (`model.safetensors`) are always gathered whole.

Under FSDP, optimiser state and gradients are sharded; compute stays in the dtype of the forward
(bf16 autocast when `precision=bf16`, fp32 islands intact), and all-gathers move fp32 parameters.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from clap_vla.errors import ConfigError

DCP_FORMAT = "dcp"
RNG_FILE = "rng_rank{}.json"


def transformer_blocks(model: nn.Module, stage: str = "this stage") -> list[nn.Module]:
    """The model's repeated blocks (FSDP units, activation-checkpointing units); a clear error for a
    model that does not declare them."""
    fn = getattr(model, "transformer_blocks", None)
    if fn is None:
        raise ConfigError(
            f"{type(model).__name__} ({stage}) does not support --train.strategy fsdp or "
            "--train.activation-checkpointing: FSDP is for the VLM stages (train ntp, train post); "
            "the Act-VAE and the VD-VAE are small enough to replicate with DDP (--train.strategy ddp)"
        )
    blocks = list(fn())
    if not blocks:
        raise ConfigError(f"{type(model).__name__}: transformer_blocks() returned no blocks")
    return blocks


def hf_blocks(root: nn.Module) -> list[nn.Module]:
    """Blocks of transformers models inside `root`: the classes each model lists as
    `_no_split_modules` (Llama decoder layers; Qwen3-VL text decoder layers and vision blocks)."""
    names: set[str] = set()
    for m in root.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in root.modules() if type(m).__name__ in names]


def checkpoint_units(blocks: list[nn.Module]) -> list[nn.Module]:
    """What activation checkpointing recomputes: whole blocks, except language-model decoder layers
    (attention with a `layer_idx`), whose attention appends to the KV cache that the RF head reads
    (`kv` context) and decoding continues from; recomputing it in backward would append the keys a
    second time. Their MLPs, the bulk of a decoder layer's activations, are recomputed instead."""
    out = []
    for b in blocks:
        attn, mlp = getattr(b, "self_attn", None), getattr(b, "mlp", None)
        out.append(mlp if mlp is not None and getattr(attn, "layer_idx", None) is not None else b)
    return out


def apply_activation_checkpointing(blocks: list[nn.Module]) -> None:
    """Recompute activations in backward instead of keeping them (non-reentrant checkpointing of
    `checkpoint_units(blocks)`; same values and gradients, less memory)."""
    from torch.distributed._composable import checkpoint

    for unit in checkpoint_units(blocks):
        checkpoint(unit)


def shard(net: nn.Module, blocks: list[nn.Module], device: torch.device) -> None:
    """fully_shard every block, then the root `net` (whose forward runs the whole loss)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for b in blocks:
        fully_shard(b, mesh=mesh)
    fully_shard(net, mesh=mesh)


def fsdp_modules(net: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in net.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(net: nn.Module) -> Iterator[None]:
    """Every parameter whole on this rank for the duration (evaluation on rank 0 alone calls the
    model's own methods, which bypass the FSDP hooks on `net.forward`). Collective: all ranks enter."""
    mods = fsdp_modules(net)
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            # fully_shard's default: blocks reshard after forward, the root (needed first in backward) not
            m.set_reshard_after_forward(m is not net)


def _local(v: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return v.full_tensor() if isinstance(v, DTensor) else v


def full_state_dict(sd: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """Whole CPU tensors from a (possibly DTensor-sharded) state dict, gathered one tensor at a time.
    Collective under FSDP: every rank calls it; ranks with keep=False return {} (only rank 0 writes)."""
    out = {}
    for k, v in sd.items():
        whole = _local(v).detach()
        if keep:
            out[k] = whole.cpu()
    return out


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimiser state held by THIS rank (the local shards under
    FSDP, whole tensors otherwise): the memory that sharding divides by the number of ranks."""

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    def nbytes(t: torch.Tensor) -> int:
        t = local(t)
        return t.numel() * t.element_size()

    params = list(model.parameters())
    out = {
        "params": sum(nbytes(p) for p in params),
        "grads": sum(nbytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(
            nbytes(v)
            for st in optimizer.state.values()
            for v in st.values()
            if isinstance(v, torch.Tensor) and v.ndim > 0
        ),
    }
    out["total"] = sum(out.values())
    return out


def save(
    ckpt: Path, net: nn.Module, optimizer: torch.optim.Optimizer, step: int, ema: dict | None, is_main: bool
) -> None:
    """Write a DCP checkpoint of `net` + optimizer (+ EMA) at `ckpt`, atomically. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from clap_vla.data.atomic import atomic_directory
    from clap_vla.train import checkpoint as ck

    msd, osd = get_state_dict(net, optimizer)
    state: dict[str, Any] = {"model": msd, "optim": osd}
    if ema is not None:
        state["ema"] = ema
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    ctx = atomic_directory(ckpt, overwrite=True) if is_main else contextlib.nullcontext()
    with ctx as tmp:
        where = [str(tmp) if is_main else ""]
        if distributed:
            dist.broadcast_object_list(where, src=0)
        tmp = Path(where[0])
        dcp.save(state, checkpoint_id=tmp)
        (tmp / RNG_FILE.format(rank)).write_text(json.dumps(ck.rng_state()))
        if is_main:
            world = dist.get_world_size() if distributed else 1
            (tmp / ck.STATE).write_text(json.dumps({"step": step, "format": DCP_FORMAT, "world_size": world}))
        if distributed:
            dist.barrier()  # every rank's shards are on disk before rank 0 renames the directory


def load(ckpt: Path, net: nn.Module, optimizer: torch.optim.Optimizer, ema: dict | None) -> int:
    """Restore a DCP checkpoint written by any number of ranks; returns the step. Collective.
    `ema`, when given, is filled in place. Each rank restores its own RNG state when the checkpoint
    has one for its rank (same world size); otherwise the RNG keeps its seed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from clap_vla.train import checkpoint as ck

    meta = ck.read_json(ckpt / ck.STATE)
    if meta.get("format") != DCP_FORMAT:
        raise ConfigError(
            f"{ckpt}: written by a --train.strategy ddp run (whole tensors); resume it with --train.strategy ddp"
        )
    msd, osd = get_state_dict(net, optimizer)  # templates (initialises the AdamW state to load into)
    state: dict[str, Any] = {"model": msd, "optim": osd}
    if ema is not None:
        state["ema"] = ema
    dcp.load(state, checkpoint_id=ckpt)
    set_state_dict(net, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    rng = ckpt / RNG_FILE.format(rank)
    if rng.exists() and meta.get("world_size") == (dist.get_world_size() if dist.is_initialized() else 1):
        ck.set_rng_state(json.loads(rng.read_text()))
    return int(meta["step"])


__all__ = [
    "apply_activation_checkpointing",
    "checkpoint_units",
    "full_state_dict",
    "hf_blocks",
    "load",
    "model_state_bytes",
    "save",
    "shard",
    "transformer_blocks",
    "unsharded",
]
