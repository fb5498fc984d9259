"""How well a VD-VAE reads the Act-VAE's tokens off video (held-out metric of `clap train vd-vae`,
the numbers of `clap eval vd-vae`; the metrics are described in stages/eval_vd_vae.py's docstring):
token accuracy, decoded PSNR next to the Act-VAE's own and a zero chunk's, the heading of the
decoded chunks' translation, retrieval top-1/top-5 and which codes are read."""

from __future__ import annotations

import numpy as np

MIN_MOTION = 0.02
"""Metres: chunks whose true translation departs less from the mean have no heading to score."""


def net_translation(chunks, valid, normalizer) -> np.ndarray:
    """Normalised chunk-relative chunks (B, H, A, D) and validity (B, H) -> the un-normalised x, y
    of each chunk's last valid step relative to its start (B, A, 2), float64."""
    x = chunks.double().cpu().numpy()
    last = np.maximum(valid.cpu().numpy().astype(np.int64).cumsum(1).argmax(1), 0)  # (B,) last valid step
    end = x[np.arange(len(x)), last, :, :2]  # (B, A, 2)
    return end * normalizer.half[:, :2] + normalizer.center[:, :2]


def heading_cosines(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N, 2) predicted and true translations -> cosines (M,) of the items whose true translation is
    at least MIN_MOTION long (a predicted zero translation scores 0)."""
    n_true = np.linalg.norm(true, axis=-1)
    keep = n_true >= MIN_MOTION
    n_pred = np.maximum(np.linalg.norm(pred[keep], axis=-1), 1e-12)
    return (pred[keep] * true[keep]).sum(-1) / (n_pred * n_true[keep])


def alignment_metrics(
    model, tset, limit: int | None, batch_size: int = 256, retrieval_batch: int = 64, normalizer=None
) -> dict:
    """Token accuracy, decoded PSNR, retrieval and code usage of `model` on `tset`; with the
    `normalizer` of its actions (chunk-relative), also the heading of the decoded chunks."""
    import torch

    from clap_vla.data.transitions import iterate
    from clap_vla.models.act_vae import psnr
    from clap_vla.train.loop import to_device

    act = model.act_vae
    hits = codes = 0
    sq = sq_act = sq_zero = 0.0
    n = 0
    z_all, v_all, k_all, ids_all, pred_all, true_all = [], [], [], [], [], []
    device = next(model.parameters()).device
    with torch.no_grad():
        for _, b in iterate(tset, batch_size, limit):
            b = to_device(b, device)
            ids, _, z = model.infer_codes(b.features, b.arm_mask)
            true_ids, true_vec = act.encode_vectors(b.actions, b.arm_mask)
            present = b.arm_mask  # (B, A)
            hits += int((ids == true_ids)[present].sum())
            codes += int(present.sum()) * ids.shape[-1]
            valid = b.action_valid[:, :, None] & present[:, None, :]  # (B, H, A)
            decoded = act.decode(ids)  # (B, H, A, D)
            sq += float(((decoded - b.actions) ** 2)[valid].double().sum())
            if normalizer is not None and normalizer.stats.relative:
                arm = present.cpu().numpy()
                pred_all.append(net_translation(decoded, b.action_valid, normalizer)[arm])
                true_all.append(net_translation(b.actions, b.action_valid, normalizer)[arm])
            sq_act += float(((act.decode(true_ids) - b.actions) ** 2)[valid].double().sum())
            sq_zero += float((b.actions**2)[valid].double().sum())
            n += int(valid.sum()) * b.actions.shape[-1]
            z_all.append(z[present].flatten(1))
            v_all.append(true_vec[present].flatten(1))
            k_all.append(true_ids[present])
            ids_all.append(ids[present])
    z, v, k = torch.cat(z_all).cpu(), torch.cat(v_all).cpu(), torch.cat(k_all).cpu()
    top1, top5 = retrieval(z, v, k, retrieval_batch)
    mse, mse_act = sq / max(n, 1), sq_act / max(n, 1)
    # Which codes are read: a VD-VAE that parks a domain in codes the true chunks never use
    # scores 0% tokens however its retrieval and PSNR look.
    read, truth = torch.cat(ids_all).cpu().reshape(-1), k.reshape(-1).unique()
    out = {
        "items": len(z),
        "token_acc": hits / max(codes, 1),
        "mse": mse,
        "psnr": float(psnr(mse)),
        "psnr_act_vae": float(psnr(mse_act)),
        # No-information baseline: predicting a zero chunk (no motion, gripper at mid-range).
        "psnr_zero": float(psnr(sq_zero / max(n, 1))),
        "top1": top1,
        "top5": top5,
        "codes_read": int(read.unique().numel()),  # distinct codes the VD-VAE emits
        "codes_true": int(truth.numel()),  # distinct codes of the true chunks
        # share of emitted codes that are among the true chunks' codes of this set
        "read_in_true": float(torch.isin(read, truth).float().mean()),
    }
    if pred_all:
        pred, true = np.concatenate(pred_all), np.concatenate(true_all)
        mean = true.mean(0)
        cos = heading_cosines(pred - mean, true - mean)
        out["heading_cos"] = float(cos.mean()) if len(cos) else float("nan")
        out["heading_within_45deg"] = float((cos >= np.cos(np.pi / 4)).mean()) if len(cos) else float("nan")
        out["heading_items"] = len(cos)
    return out


def retrieval(z, v, keys, group: int) -> tuple[float, float]:
    """Top-1/top-5 of the true item among `group` consecutive items by cosine similarity."""
    import torch
    import torch.nn.functional as F

    z, v = F.normalize(z.float(), dim=-1), F.normalize(v.float(), dim=-1)
    t1 = t5 = total = 0
    for a in range(0, len(z), group):
        zs, vs, ks = z[a : a + group], v[a : a + group], keys[a : a + group]
        if len(zs) < 2:
            continue
        ranked = (zs @ vs.T).argsort(dim=1, descending=True)  # (g, g)
        same = (ks[:, None, :] == ks[None, :, :]).all(-1)  # (g, g): equal true token sequences
        ok = torch.gather(same, 1, ranked)  # (g, g): is the j-th ranked item a correct one
        t1 += int(ok[:, 0].sum())
        t5 += int(ok[:, :5].any(1).sum())
        total += len(zs)
    return t1 / max(total, 1), t5 / max(total, 1)
