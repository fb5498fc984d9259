"""A CLAP-RF policy on held-out robot samples (the held-out metric of `clap train post`): the MSE
and PSNR of its sampled chunks against the true normalised chunk, and the teacher-forced
action-token accuracy of its VLM (what Knowledge Matching preserves, paper §III-E)."""

from __future__ import annotations


def rf_metrics(model, s, text, samples: int, batch_size: int = 64, steps: int | None = None) -> dict[str, float]:
    """Held-out robot samples: MSE of sampled chunks vs the true normalised chunk (valid steps and
    present arms), and the policy's teacher-forced action-token accuracy (what KM preserves)."""
    import numpy as np
    import torch

    from clap_vla.data.ntp import iterate
    from clap_vla.train.loop import to_device

    was = model.training
    model.eval()
    se = n = hit = tot = 0.0
    g = torch.Generator().manual_seed(0)
    dev = next(model.parameters()).device
    with torch.no_grad():
        for pos, b in iterate(s, text, batch_size, limit=samples):
            b = to_device(b, dev)
            prompts = [text.prompt(s.robot_type, s.instructions[s.instruction[i]]) for i in pos]
            x = model.sample_actions(b.visual, prompts, b.arm_mask, steps, generator=g)
            m = (b.action_valid[:, :, None] & b.arm_mask[:, None, :]).float()[..., None]  # (B, H, A, 1)
            se += float((((x - b.actions) ** 2) * m).sum())
            n += float(m.sum()) * x.shape[-1]
            logits, labels, _ = model.policy.target_logits(b)
            act = labels >= model.policy.act_offset
            hit += float((logits.argmax(-1)[act] == labels[act]).sum())
            tot += float(act.sum())
    model.train(was)
    mse = se / max(n, 1)
    return {"chunk_mse": mse, "chunk_psnr": float(20 * np.log10(2.0 / np.sqrt(max(mse, 1e-12)))),
            "action_acc": hit / max(tot, 1)}  # fmt: skip
