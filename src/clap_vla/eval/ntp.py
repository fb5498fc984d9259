"""CLAP-NTP's action-token accuracy on a sample set: teacher-forced (and the text tokens', and the
cross-entropy of the action tokens) and free-running with constrained greedy decoding. Held-out
metric of `clap train ntp` and the numbers of `clap eval ntp`."""

from __future__ import annotations

import numpy as np


def token_metrics(model, s, text, samples: int, generate: int, batch_size: int = 64) -> dict[str, float]:
    """Teacher-forced accuracy of the action tokens (and text tokens) over up to `samples` samples of
    set `s`, and free-running accuracy (greedy, constrained decoding) over the first `generate`."""
    import torch

    from clap_vla.data.ntp import iterate
    from clap_vla.models.ntp_policy import codes_to_ids

    was = model.training
    model.eval()
    hits = {"action": [0, 0], "text": [0, 0]}
    ce_sum, ce_n = 0.0, 0
    gen_hit = gen_n = gen_exact = gen_rows = 0
    with torch.no_grad():
        for pos, batch in iterate(s, text, batch_size, limit=samples):
            batch = _to(batch, next(model.parameters()).device)
            logits, labels, _ = model.target_logits(batch)
            is_act = labels >= model.act_offset
            ok = logits.argmax(-1) == labels
            for k, sel in (("action", is_act), ("text", ~is_act)):
                hits[k][0] += int(ok[sel].sum())
                hits[k][1] += int(sel.sum())
            ce = torch.nn.functional.cross_entropy(logits[is_act], labels[is_act], reduction="sum")
            ce_sum, ce_n = ce_sum + float(ce), ce_n + int(is_act.sum())
            todo = max(0, min(len(pos), generate - gen_rows))
            if todo:
                prompts = [text.prompt(s.robot_type, s.instructions[s.instruction[i]]) for i in pos[:todo]]
                want = [codes_to_ids(s.codes[i], model.act_offset) for i in pos[:todo]]
                _, acts, _ = model.generate(batch.visual[:todo], prompts, [len(w) for w in want])
                for a, w in zip(acts, want, strict=True):
                    m = int(np.sum(np.asarray(a) == np.asarray(w)))
                    gen_hit, gen_n, gen_exact = gen_hit + m, gen_n + len(w), gen_exact + int(m == len(w))
                gen_rows += todo
    model.train(was)
    out = {
        "action_acc": hits["action"][0] / max(1, hits["action"][1]),
        "text_acc": hits["text"][0] / max(1, hits["text"][1]) if hits["text"][1] else float("nan"),
        "ce_action": ce_sum / max(1, ce_n),
    }
    if gen_rows:
        out.update({"gen_action_acc": gen_hit / max(1, gen_n), "gen_exact": gen_exact / gen_rows})
    return out


def _to(batch, device):
    from clap_vla.train.loop import to_device

    return to_device(batch, device)
