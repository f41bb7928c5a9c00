"""Training: config, torchrun loop, parallelism, optimizer, schedule, metrics, checkpoints."""
