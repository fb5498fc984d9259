"""`clap train post` end to end on real on-disk data: a tiny CLAP-NTP artifact is adapted (stage 1)
and post-trained with the RF head + Knowledge Matching (stage 2); stage 2 killed after 2 steps and
resumed equals a straight run; the artifact is a rollout policy in a real MuJoCo episode, its NTP
mode still decodes tokens, and `clap eval latency` reports both columns."""

from __future__ import annotations

import json

import pytest
import torch

from clap_vla.cli import main
from clap_vla.train import checkpoint as ck

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ntp(tmp_path_factory):
    from tests.train.test_ntp_stage import _args
    from tests.train.test_ntp_stage import setup as ntp_setup

    root = ntp_setup.__wrapped__(tmp_path_factory)
    art = root / "ntp"
    assert main(_args(root, art, 3)) == 0
    return root, art


def _args(root, art, out, *extra):
    return ["train", "post", "--config", "post_tiny", "--ntp", str(art), "--robot-data", str(root / "robot"),
            "--video-tokens", str(root / "tokens"), "--out", str(out), "--train.no-progress",
            "--adapt.no-progress", *extra]  # fmt: skip


class Killed(Exception):
    pass


def test_post_training_resumes_and_keeps_the_reference_out_of_the_artifact(ntp, tmp_path, monkeypatch):
    from clap_vla.train import loop

    root, art = ntp
    monkeypatch.setenv("CLAP_CACHE_DIR", str(root / "cache"))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_args(root, art, straight)) == 0
    save = loop.ck.save_checkpoint
    calls = []

    def die_in_stage2(run_dir, model, optimizer, step, ema):
        save(run_dir, model, optimizer, step, ema)
        calls.append(run_dir)
        if run_dir == resumed:  # stage 2's directory (stage 1 writes <out>/stage1_ntp)
            raise Killed

    monkeypatch.setattr(loop.ck, "save_checkpoint", die_in_stage2)
    with pytest.raises(Killed):
        main(_args(root, art, resumed))
    monkeypatch.setattr(loop.ck, "save_checkpoint", save)
    assert main([*_args(root, art, resumed), "--resume"]) == 0
    a, b = ck.load_weights(straight / ck.MODEL), ck.load_weights(resumed / ck.MODEL)
    assert a.keys() == b.keys() and not any(k.startswith("reference.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, rtol=0, atol=0)
    meta = json.loads((straight / ck.META).read_text())
    assert meta["stage"] == "post" and meta["parents"]["reference"]["path"].endswith("stage1_ntp")
    assert {"chunk_mse", "chunk_psnr", "action_acc"} <= set(meta["eval"])
    # Stage 1 is a full NTP artifact initialised from the given one.
    s1 = json.loads((straight / "stage1_ntp" / ck.META).read_text())
    assert s1["stage"] == "ntp" and s1["parents"]["init"]["sha256"] == ck.parent_entry(art)["sha256"]


def test_post_dry_run_runs_both_stages_one_step_and_writes_nothing(ntp, tmp_path, monkeypatch, capsys):
    root, art = ntp
    monkeypatch.setenv("CLAP_CACHE_DIR", str(root / "cache"))
    out = tmp_path / "post"
    assert main(_args(root, art, out, "--train.dry-run")) == 0
    text = capsys.readouterr().out
    assert text.count("dry run (") == 2 and "stage1_ntp not written" in text and not out.exists()


def test_post_artifact_is_a_policy_and_latency_reports_both(ntp, tmp_path, monkeypatch):
    import warnings

    import numpy as np

    from clap_vla.configs.sim import RolloutConfig
    from clap_vla.models.clap_policy import ClapPolicy
    from clap_vla.sim.rollout import evaluate
    from clap_vla.stages.eval_latency import observation_from

    root, art = ntp
    monkeypatch.setenv("CLAP_CACHE_DIR", str(root / "cache"))
    out = tmp_path / "post"
    assert main(_args(root, art, out, "--km", "off", "--no-adapt-stage", "--model.rf.context", "hidden")) == 0
    cfg = json.loads((out / ck.CONFIG).read_text())
    assert cfg["clap"]["km_weight"] == 0 and cfg["clap"]["rf"]["context"] == "hidden"
    obs = observation_from(root / "robot", "toy")
    for mode in ("rf", "ntp"):
        pol = ClapPolicy(out, mode=mode)
        chunk = pol.infer(obs)
        assert chunk.shape == (8, 7) and np.isfinite(chunk).all()
        assert ("denoise_s" if mode == "rf" else "decode_s") in pol.last_timing
    # Inference precision: the VLM and the head under bf16 autocast when asked (`auto`: where the
    # device multiplies bf16 natively), the Act-VAE decoder in fp32 either way.
    for prec in ("fp32", "bf16"):
        for mode in ("rf", "ntp"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # bf16 warns on CPUs that emulate it
                pol = ClapPolicy(out, mode=mode, precision=prec)
            seen: dict[str, set] = {"vlm": set(), "head": set(), "act_vae": set()}
            hooks = [
                next(m for m in part.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(
                    lambda _m, _i, o, k=k, seen=seen: seen[k].add(o.dtype)
                )
                for k, part in (("vlm", pol.model.vlm), ("head", pol.clap.head), ("act_vae", pol.act_vae.decoder))
            ]
            assert np.isfinite(pol.infer(obs)).all()
            for h in hooks:
                h.remove()
            want = torch.bfloat16 if prec == "bf16" else torch.float32
            assert seen["vlm"] == {want}
            assert seen["head"] == ({want} if mode == "rf" else set())
            assert seen["act_vae"] == (set() if mode == "rf" else {torch.float32})
    res = evaluate(RolloutConfig(env="metaworld", tasks="reach-v3", episodes=1, workers=1, max_steps=10, size=32),
                   policy=str(out))  # fmt: skip
    assert res["tasks"]["reach-v3"]["outcomes"][0]["steps"] == 10
    assert main(["eval", "latency", "--policy", str(out), "--repeats", "2", "--warmup", "0", "--steps", "1", "4"]) == 0
    lat = json.loads((out / "eval" / "latency.json").read_text())
    assert lat["ntp"]["p50_ms"] > 0 and lat["rf_4"]["denoise_p50_ms"] > 0 and lat["ratio_ntp_over_rf_1"] > 0
    # The ceiling: NTP over the median of the RF rows' encode + prefix (the phases both columns pay).
    shared = [lat[f"rf_{k}"]["encode_p50_ms"] + lat[f"rf_{k}"]["prefix_p50_ms"] for k in (1, 4)]
    assert lat["shared_encode_prefix_p50_ms"] == pytest.approx(sum(shared) / 2)
    assert lat["ratio_ceiling"] == pytest.approx(lat["ntp"]["p50_ms"] / (sum(shared) / 2))
    # It leaves out the head's own time, so it lies above the measured ratio (up to timing noise).
    assert lat["ratio_ceiling"] >= 0.9 * lat["ratio_ntp_over_rf_4"]


def test_epochs_resolve_to_steps_in_both_stages_and_stage1_can_hold_its_lr(ntp, tmp_path, monkeypatch):
    """--adapt.epochs / --train.epochs (Table IX gives post-training in epochs) become
    ceil(epochs * samples / batch) steps once the stage knows its samples; config.json records them,
    a finished stage 1 is recognised by them, and --adapt.min-lr-ratio 1 holds stage 1's lr after
    warmup (Table IX, stage 1: no decay)."""
    import math

    root, art = ntp
    monkeypatch.setenv("CLAP_CACHE_DIR", str(root / "cache"))
    out = tmp_path / "post"
    args = _args(root, art, out, "--adapt.epochs", "0.5", "--adapt.min-lr-ratio", "1", "--train.epochs", "0.5")
    assert main(args) == 0
    s1 = out / "stage1_ntp"
    samples1 = sum(json.loads((s1 / ck.META).read_text())["samples"].values())
    samples2 = sum(json.loads((out / ck.META).read_text())["samples"].values())
    steps1 = json.loads((s1 / ck.CONFIG).read_text())["train"]["steps"]
    steps2 = json.loads((out / ck.CONFIG).read_text())["train"]["steps"]
    assert steps1 == math.ceil(0.5 * samples1 / 8) and steps2 == math.ceil(0.5 * samples2 / 8)
    assert steps1 >= 4, steps1  # long enough that a cosine would have decayed the logged lr
    assert json.loads((out / ck.META).read_text())["step"] == steps2
    rows = [json.loads(x) for x in (s1 / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["split"] == "train"]
    assert lrs and all(lr == 1e-3 for lr in lrs)  # post_tiny: peak 1e-3, warmup 1 step, no decay
    assert main([*args, "--resume"]) == 0  # stage 1 is recognised as done at its resolved step
