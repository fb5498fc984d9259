"""Copy a VD-VAE artifact with its EMA teacher's weights in the student encoder's place.

`clap label` and `clap eval vd-vae` read the student encoder. This writes a copy of the artifact in
which the encoder is the teacher (the training checkpoint is left out), so the teacher's reading,
the pseudo-positive the action-free samples were pulled toward, can be labelled and probed with
the same tools (docs/results.md, "The human videos' objective is what loses the hand's heading"):

    python experiments/vd_vae_teacher_as_encoder.py $O/vd_vae_siglip $O/diag/siglip_teacher_as_student
    clap label --vd-vae $O/diag/siglip_teacher_as_student --data $O/data/human --out $O/diag/tokens_teacher
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    from safetensors.torch import load_file, save_file

    from clap_vla.train import checkpoint as ck

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path, help="a VD-VAE artifact (clap train vd-vae --out)")
    p.add_argument("out", type=Path, help="where to write the copy (must not exist)")
    args = p.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new directory")
    weights = load_file(args.artifact / ck.MODEL)
    teacher = {k.removeprefix("teacher."): v for k, v in weights.items() if k.startswith("teacher.")}
    student = [k for k in weights if k.startswith("encoder.")]
    if not teacher or sorted(teacher) != sorted(k.removeprefix("encoder.") for k in student):
        raise SystemExit(f"{args.artifact / ck.MODEL}: no teacher weights matching the encoder's; is this a VD-VAE?")
    shutil.copytree(args.artifact, args.out, ignore=shutil.ignore_patterns("checkpoint"))
    for k, v in teacher.items():
        weights["encoder." + k] = v.clone()
    save_file(weights, args.out / ck.MODEL)
    print(f"wrote {args.out}: encoder <- teacher ({len(teacher)} tensors)")


if __name__ == "__main__":
    main()
