"""Metrics shared by training (held-out evaluation inside `fit`) and the `clap eval` commands.

    act_vae.py      reconstruction: MSE / PSNR per dimension, codebook usage and perplexity
    vd_vae.py       alignment with the Act-VAE: token accuracy, decoded PSNR, heading, retrieval
    ntp.py          action-token accuracy, teacher-forced and free-running
    clap_policy.py  sampled-chunk error and token accuracy of a CLAP-RF policy

Importing this package is light; each metric imports torch where it runs.
"""
