"""The training data loader: shards to tasks to batches, in a resumable order."""
