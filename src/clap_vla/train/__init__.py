"""The one training loop every stage uses (`fit`), with its optimiser, schedule, checkpoints,
metrics and torch.distributed plumbing."""
