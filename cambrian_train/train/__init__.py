"""Training: the loop, stage freezing and parameter groups, optimiser, checkpoints, metrics."""
