"""clap-vla: Contrastive Latent Action Pretraining (arXiv 2601.04061) for VLA robot policies.

Importing the package is deliberately cheap: heavy dependencies (torch, pyarrow, av, transformers,
mujoco) are imported by the modules that need them, never here.
"""

__version__ = "0.1.0"
