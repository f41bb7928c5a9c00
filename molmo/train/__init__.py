"""Training: config, the torchrun loop, parallelism, optimizer, schedule, metrics and resumable checkpoints."""
