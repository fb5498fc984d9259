"""Do the frozen frame features say where each coloured button is? (diagnostic for the buttons testbed)

Renders the reset frame of N scenes (front camera, 128 px; seeds outside every demonstration and
evaluation block), encodes them with each frame encoder given, and fits a ridge regression from the
flattened features to the (x, y) of each button on the first 220 scenes; prints R^2 on the rest.
A high R^2 says the encoder keeps where each colour is, so a policy that does not find the named
button is limited by its own learning, not by the features.

    python experiments/buttons_feature_probe.py efficientnet-lite0 "efficientnet-lite0:stages=3+5" pixels:16
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    from clap_vla.nn.frame_encoders import build_frame_encoder
    from clap_vla.sim.buttons import COLOURS, make

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("encoders", nargs="+")
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--train", type=int, default=220)
    a = ap.parse_args()
    env = make("red", size=128)
    imgs, pos = [], []
    for k in range(a.scenes):
        obs = env.reset(900_000 + k)  # a seed range no generation or evaluation uses
        imgs.append(obs["images"]["front"])
        pos.append(env._env.positions.copy())
    env.close()
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    y = np.stack(pos)  # (N, colours, 2)
    for spec in a.encoders:
        enc = build_frame_encoder(spec, precision="fp32")
        with torch.no_grad():
            f = torch.cat([enc.encode(x[i : i + 50]).float() for i in range(0, len(x), 50)]).flatten(1).numpy()
        r2 = {}
        for c, name in enumerate(COLOURS):
            m = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(f[: a.train], y[: a.train, c])
            r2[name] = round(float(r2_score(y[a.train :, c], m.predict(f[a.train :]))), 3)
        print(f"{spec}: {f.shape[1]} features, held-out R^2 of each button's (x, y): {r2}")


if __name__ == "__main__":
    main()
