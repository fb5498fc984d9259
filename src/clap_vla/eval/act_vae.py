"""Act-VAE reconstruction quality (normalised space, valid steps of present arms): MSE per
dimension and overall, PSNR as the paper defines it (20 log10(R / sqrt(MSE)), R = 2; eq. 8's
distortion term), codebook usage and perplexity. Held-out metric of `clap train act-vae` and the
numbers of `clap eval act-vae`."""

from __future__ import annotations


def reconstruction_metrics(model, batches, device) -> dict[str, float]:
    """MSE and PSNR over valid steps of present arms, per dimension too; codebook usage/perplexity."""
    import torch

    from clap_vla.models.act_vae import psnr
    from clap_vla.types import ACTION_DIM_NAMES

    model.eval()
    sq = torch.zeros(len(ACTION_DIM_NAMES), dtype=torch.float64)
    n = 0
    counts = torch.zeros(model.cfg.num_codes, dtype=torch.float64)
    with torch.no_grad():
        for b in batches:
            b = type(b)(**{k: getattr(b, k).to(device) for k in b.__dataclass_fields__})
            codes = model.encode(b.actions, b.arm_mask)
            recon = model.decode(codes)  # (B, H, A, D)
            valid = b.action_valid[:, :, None] & b.arm_mask[:, None, :]  # (B, H, A)
            err = ((recon - b.actions) ** 2)[valid]  # (M, D)
            sq += err.double().sum(0).cpu()
            n += err.shape[0]
            ids = codes[codes >= 0]
            counts += torch.bincount(ids.cpu(), minlength=model.cfg.num_codes).double()
    per_dim = sq / max(n, 1)
    mse = float(per_dim.mean())
    p = counts / counts.sum().clamp(min=1)
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    out = {"mse": mse, "psnr": float(psnr(mse)), "usage": float((counts > 0).double().mean()), "perplexity": perplexity}
    out.update({f"mse_{name}": float(v) for name, v in zip(ACTION_DIM_NAMES, per_dim, strict=True)})
    return out
