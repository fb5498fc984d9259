"""The training loop: `fit(model, data, cfg, run_dir)`.

Contract:
  - `model.compute_loss(batch) -> (loss, metrics)`; metrics are scalar tensors, read at log time.
  - `data.batch(step, rank, world_size) -> batch`: the batch of a step is a pure function of the
    step (and rank), so a resumed run sees exactly the batches the killed one would have.
  - Optional `model.after_step(step, info)` runs after each optimiser step (e.g. dead-code restart).
  - Optional `evaluate(model) -> dict[str, float]` runs on rank 0 (on every rank under FSDP; it
    must not write files) every `eval_every` steps and at the end, with the EMA weights when EMA is on.

Under `torchrun` the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU), or
sharded with FSDP2 (`strategy="fsdp"`, see train/fsdp.py); each rank draws its own slice of every
global batch; rank 0 writes metrics, checkpoints and artifacts (FSDP checkpoints: every rank its
shards).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from clap_vla.errors import ClapError, ConfigError
from clap_vla.nn.precision import resolve as resolve_precision
from clap_vla.train import checkpoint as ck
from clap_vla.train import fsdp
from clap_vla.train.distributed import DistInfo, all_reduce_mean, barrier, setup
from clap_vla.train.metrics import MetricsWriter
from clap_vla.train.optim import build_optimizer, lr_factor, set_lr


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    """Optimiser steps (set from `epochs` when that is > 0)."""
    epochs: float = 0.0
    """Passes over the training samples (Table IX gives post-training in epochs); when > 0 the stage
    sets `steps` to ceil(epochs * samples / batch_size) once it knows its sample count (see
    `resolve_epochs`), and the `steps` given is ignored. 0 = use `steps`."""
    batch_size: int = 256
    """Global batch size (split evenly over ranks)."""
    lr: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases, norms, embeddings, codebooks)."""
    warmup_steps: int = 1000
    """Linear warmup steps."""
    decay_start: int = 0
    """Step where the cosine decay begins; between the end of warmup and it the lr stays at its
    peak (paper §IV-C1 / Table IX, CLAP-NTP: constant, cosine decay after 100k). 0 = right after
    warmup (warmup + cosine)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at this fraction of the peak; 1 = no decay (Table IX, post-training
    stage 1). See optim.lr_factor."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    lr_multipliers: tuple[tuple[str, float], ...] = ()
    """(name substring, factor): e.g. (("codebook", 50.0),) for the Act-VAE's codebook."""
    ema_decay: float = 0.0
    """EMA of the weights (0 = off); the artifact then holds the EMA weights."""
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    """bf16 autocast for the forward pass (quantisation and losses stay fp32); auto = bf16 where the
    device multiplies bf16 natively (CUDA, CPUs with AVX512-BF16 / AMX), fp32 elsewhere."""
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 1000
    seed: int = 0
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    threads: int = 0
    """CPU threads for PyTorch's intra-op parallelism, per process (torch.set_num_threads), set before
    any data or feature work; 0 = PyTorch's default (all cores, or OMP_NUM_THREADS). Give each of
    several runs sharing a machine its share of the cores. Not part of the config a resume checks."""
    progress: bool = True
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: ddp replicates the model on every rank; fsdp shards parameters, gradients and
    optimiser state with FSDP2 (VLM stages) and writes sharded checkpoints that resume on another
    number of ranks."""
    stop_at: int = 0
    """Stop once this step is done and checkpointed, keeping the schedule of `steps`; continue later
    with --resume (a job on a preemptible or time-limited cluster slot). 0 = run to `steps`."""
    activation_checkpointing: bool = False
    """Recompute activations in backward (less memory, more compute): whole DiT and vision blocks,
    and the MLPs of language-model layers (their attention writes the KV cache)."""
    dry_run: bool = False
    """Build the model and the data, run ONE training step on one batch, print parameter counts,
    batch shapes, the loss, step time and peak memory, and write nothing into the run directory
    (shared frame/feature caches the stage builds are kept for the real run)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(
                f"need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got {self.lr}, {self.warmup_steps}, "
                f"{self.min_lr_ratio}"
            )
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0 (0 = use steps), got {self.epochs}")
        if self.decay_start and not self.warmup_steps <= self.decay_start <= self.steps:
            raise ConfigError(
                f"decay_start must be 0 (decay right after warmup) or within [warmup_steps, steps] = "
                f"[{self.warmup_steps}, {self.steps}], got {self.decay_start}; "
                f"set --train.decay-start with --train.steps"
            )
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = PyTorch's default), got {self.threads}")


def resolve_epochs(cfg: TrainConfig, samples: int) -> TrainConfig:
    """`cfg` with `steps` = ceil(epochs * samples / batch_size) when `epochs` > 0, else `cfg` as is.
    The stage calls it once it knows its training sample count (the sum over its datasets), before
    `fit`; config.json then records the resolved steps, and a resume on the same data resolves the
    same number."""
    if cfg.epochs <= 0:
        return cfg
    if samples < 1:
        raise ConfigError(f"epochs {cfg.epochs}: the training set has no samples")
    from dataclasses import replace

    return replace(cfg, steps=max(1, math.ceil(cfg.epochs * samples / cfg.batch_size)))


class BatchSource(Protocol):
    def batch(self, step: int, rank: int, world_size: int) -> Any: ...


class _LossModule(nn.Module):
    """DDP syncs gradients of what runs inside its forward: route compute_loss through one."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.compute_loss(batch)


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(to_device(v, device) for v in x)
    if hasattr(x, "__dataclass_fields__"):
        return type(x)(**{k: to_device(getattr(x, k), device) for k in x.__dataclass_fields__})
    return x


def fit(
    model: nn.Module,
    data: BatchSource,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    stage_config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    dist_info: DistInfo | None = None,
    prepare: Callable[[], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Train; return {"step", "train": last logged metrics, "eval": last eval metrics}.

    `prepare` writes the stage's own files into `run_dir` (norm stats, tokenizer, ...) and returns
    entries for meta.json. It runs on rank 0 only AFTER the run directory was checked (a fresh
    run refuses an existing one; a resume refuses a different config), so a refused command never
    overwrites anything of the run it was refused for; a dry run never calls it."""
    run_dir = Path(run_dir)
    info = dist_info or setup(cfg.device, cfg.threads)
    torch.manual_seed(cfg.seed)
    net: nn.Module = _LossModule(model)
    sharded = cfg.strategy == "fsdp"
    if not (sharded and info.enabled):
        model.to(info.device)  # (fully_shard moves only each rank's shards onto the device)
    if sharded or cfg.activation_checkpointing:
        blocks = fsdp.transformer_blocks(model, stage=run_dir.name)
        if cfg.activation_checkpointing:
            fsdp.apply_activation_checkpointing(blocks)
        if sharded and info.enabled:
            fsdp.shard(net, blocks, info.device)  # before the optimiser: it swaps in sharded parameters
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.lr_multipliers)
    full_config = {"train": asdict(cfg), **(stage_config or {})}
    bf16 = resolve_precision(cfg.precision, info.device) == "bf16"
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if cfg.dry_run:
        return _dry_run(model, net, data, cfg, optimizer, info, autocast, run_dir)

    start, ema = 0, None
    has_ckpt = (run_dir / ck.CHECKPOINT / ck.STATE).exists()
    if has_ckpt and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a training run; pass --resume to continue it or pick a new --out"
        )
    if has_ckpt:
        _check_same_config(run_dir, full_config)
        if sharded:
            ema = _ema_init(model) if cfg.ema_decay > 0 else None
            start = fsdp.load(run_dir / ck.CHECKPOINT, net, optimizer, ema)
        else:
            start, ema, _ = ck.load_checkpoint(run_dir, model, optimizer)
            model.to(info.device)
            if ema is not None:
                ema = {k: v.to(info.device) for k, v in ema.items()}
        if start >= cfg.steps:
            if info.is_main:
                print(f"{run_dir}: already trained for {start} steps")
            return {"step": start, "train": {}, "eval": ck.read_json(run_dir / ck.META).get("eval", {})}
    elif info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ck.write_json(run_dir / ck.CONFIG, full_config)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # rows of a run killed before its first checkpoint
    if ema is None and cfg.ema_decay > 0:
        ema = _ema_init(model)

    writer = MetricsWriter(run_dir, enabled=info.is_main)
    if has_ckpt:
        writer.truncate_after(start)
    if info.enabled and not sharded:
        # Per-rank buffers (e.g. codebook usage counts) must not be overwritten by rank 0's at every
        # forward; newer torch names the switch forward_sync_buffers (syncing once at init is fine).
        import inspect

        ddp = nn.parallel.DistributedDataParallel
        no_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
            else {"broadcast_buffers": False}
        )
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        net = ddp(net, device_ids=device_ids, **no_sync)
    meta = dict(meta or {})
    if prepare is not None and info.is_main:
        meta.update(prepare() or {})
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    bar = None
    if cfg.progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {run_dir.name}", unit="step")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    count, t0 = 0, time.perf_counter()
    model.train()
    end = max(start, min(cfg.steps, cfg.stop_at)) if cfg.stop_at > 0 else cfg.steps
    for step in range(start, end):
        batch = to_device(data.batch(step, info.rank, info.world_size), info.device)
        lr = set_lr(optimizer, cfg.lr, lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio, cfg.decay_start))
        with autocast:
            loss, metrics = net(batch)
        if not torch.isfinite(loss):
            raise ClapError(
                f"step {step}: loss is {loss.item()} ({ {k: float(v) for k, v in metrics.items()} }); "
                f"nothing from this step was saved — lower the lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if cfg.grad_clip > 0
            else torch.tensor(0.0)
        )
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if k in ema:
                        ema[k].lerp_(v, 1 - cfg.ema_decay)
        if hasattr(model, "after_step"):
            extra = model.after_step(step, info)
            if extra:
                metrics = {**metrics, **extra}
        for k, v in {"loss": loss, **metrics, "grad_norm": grad_norm}.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            # NaN marks "not measured this step" (e.g. token accuracy on a batch without robot
            # samples): averaged over the steps that measured it. Read with .item() only at log time.
            ok = ~torch.isnan(v)
            v = torch.where(ok, v, torch.zeros_like(v))
            sums[k] = sums[k] + v if k in sums else v
            counts[k] = counts[k] + ok if k in counts else ok.float()
        count += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed = time.perf_counter() - t0
            avg = all_reduce_mean(
                {k: float(v) / float(counts[k]) if float(counts[k]) else float("nan") for k, v in sums.items()}, info
            )
            avg.update(lr=lr, steps_per_s=count / elapsed, samples_per_s=count * cfg.batch_size / elapsed)
            writer.write(done, avg)
            last_train = avg
            if bar is not None:
                bar.set_postfix(loss=f"{avg['loss']:.4g}")
            sums, counts, count, t0 = {}, {}, 0, time.perf_counter()
        if bar is not None:
            bar.update(1)
        if evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            last_eval = _run_eval(model, ema, evaluate, info, net if sharded and info.enabled else None)
            if info.is_main:
                writer.write(done, last_eval, prefix="eval")
        if done % cfg.checkpoint_every == 0 or done in (cfg.steps, end):
            if sharded:  # every rank writes its shards; the artifact's weights are gathered whole
                fsdp.save(run_dir / ck.CHECKPOINT, net, optimizer, done, ema, info.is_main)
                sd = fsdp.full_state_dict(model.state_dict(), keep=info.is_main)
                weights = fsdp.full_state_dict(ema, keep=info.is_main) if ema is not None else {}
            elif info.is_main:
                ck.save_checkpoint(run_dir, model, optimizer, done, ema)
                sd, weights = model.state_dict(), ema or {}
            if info.is_main:
                ck.save_weights(run_dir / ck.MODEL, {**sd, **weights})
                meta.update(step=done, code_version=ck.code_version(), train=last_train, eval=last_eval)
                ck.write_json(run_dir / ck.META, meta)
            barrier()
    if bar is not None:
        bar.close()
    writer.close()
    if end < cfg.steps and info.is_main:
        print(f"{run_dir}: stopped at step {end} of {cfg.steps} (--train.stop-at); continue with --resume")
    return {"step": end, "train": last_train, "eval": last_eval}


def _describe(batch: Any) -> dict[str, str]:
    """Field -> "dtype (shape)" of a batch dataclass (or dict) of tensors."""
    items = batch.items() if isinstance(batch, dict) else ((k, getattr(batch, k)) for k in batch.__dataclass_fields__)
    out = {}
    for k, v in items:
        if isinstance(v, torch.Tensor):
            out[k] = f"{str(v.dtype).removeprefix('torch.')} {tuple(v.shape)}"
        elif isinstance(v, dict):
            out.update({f"{k}.{kk}": f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"
                        for kk, t in v.items() if isinstance(t, torch.Tensor)})  # fmt: skip
    return out


def _ema_init(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _dry_run(model, net, data, cfg: TrainConfig, optimizer, info: DistInfo, autocast, run_dir: Path) -> dict[str, Any]:
    """One training step on one batch; nothing is written (see TrainConfig.dry_run)."""
    import resource

    t0 = time.perf_counter()
    batch = to_device(data.batch(0, info.rank, info.world_size), info.device)
    t_batch = time.perf_counter() - t0
    model.train()
    t0 = time.perf_counter()
    with autocast:
        loss, metrics = net(batch)
    if not torch.isfinite(loss):
        raise ClapError(f"dry run: the first batch's loss is {loss.item()}; check the data and the lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    no_grad = sum(1 for p in trainable if p.grad is None)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
    optimizer.step()
    if info.device.type == "cuda":
        torch.cuda.synchronize()
    step_s = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "trainable_without_grad": no_grad,
        "batch": _describe(batch),
        "loss": float(loss.detach()),
        "metrics": {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()},
        "batch_s": t_batch,
        "step_s": step_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_state_mb_per_rank": {k: v / 2**20 for k, v in fsdp.model_state_bytes(model, optimizer).items()},
        "world_size": info.world_size,
        "strategy": cfg.strategy,
    }
    if info.device.type == "cuda":
        summary["peak_cuda_mb"] = torch.cuda.max_memory_allocated(info.device) / 2**20
    if info.is_main:
        print(f"dry run ({run_dir} not written): {summary['parameters'] / 1e6:.2f} M parameters, "
              f"{summary['trainable'] / 1e6:.2f} M trainable "
              f"({no_grad} trainable tensors without a gradient)")  # fmt: skip
        for k, v in summary["batch"].items():
            print(f"  batch.{k}: {v}")
        print(f"  loss {summary['loss']:.4g}; batch {t_batch:.2f} s, step {step_s:.2f} s; peak RSS "
              f"{summary['peak_rss_mb']:.0f} MB" + (f", peak CUDA {summary['peak_cuda_mb']:.0f} MB"
              if "peak_cuda_mb" in summary else ""))  # fmt: skip
        ms = summary["model_state_mb_per_rank"]
        print(
            f"  model states per rank ({cfg.strategy}, {info.world_size} rank(s)): {ms['total']:.1f} MB "
            f"(parameters {ms['params']:.1f}, gradients {ms['grads']:.1f}, optimiser {ms['optimizer']:.1f})"
        )
    return {"step": 0, "train": {"loss": summary["loss"]}, "eval": {}, "dry_run": summary}


def _run_eval(model, ema, evaluate, info, sharded_net=None) -> dict[str, float]:
    """Evaluate on rank 0 (with the EMA weights when EMA is on). Under FSDP every rank evaluates on
    whole parameters and rank 0 reports: FSDP records the order in which its units ran forward
    and prefetches by it in the next backward, so forward calls on one rank alone would make that
    rank's collectives diverge from the others' (a deadlock)."""
    if not info.is_main and sharded_net is None:
        barrier()
        return {}
    backup = None
    if ema is not None:
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict({**backup, **ema})
    model.eval()
    try:
        with fsdp.unsharded(sharded_net) if sharded_net is not None else contextlib.nullcontext():
            with torch.no_grad():
                out = {k: float(v) for k, v in evaluate(model).items()}
    finally:
        if backup is not None:
            model.load_state_dict(backup)
        model.train()
    barrier()
    return out if info.is_main else {}


def _check_same_config(run_dir: Path, full_config: dict[str, Any]) -> None:
    import json

    saved = ck.read_json(run_dir / ck.CONFIG)
    now = json.loads(json.dumps(full_config, default=str))
    ignore = {"progress", "log_every", "eval_every", "checkpoint_every", "resume", "out", "overwrite", "dry_run",
              "activation_checkpointing", "stop_at", "threads"}  # fmt: skip
    diffs = []
    for section in set(saved) | set(now):
        a, b = saved.get(section, {}), now.get(section, {})
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                diffs.append(f"{section}: {a!r} -> {b!r}")
            continue
        for k in set(a) | set(b):
            if k not in a and b[k] in (None, False, 0, "", [], {}):
                continue  # an option newer than the run, left off: the run as it was started
            if k not in ignore and a.get(k) != b.get(k):
                diffs.append(f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    if diffs:
        raise ConfigError(
            f"{run_dir}: --resume with a different config than the run was started with: {'; '.join(sorted(diffs))}"
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["BatchSource", "TrainConfig", "count_parameters", "fit", "resolve_epochs"]
