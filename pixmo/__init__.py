"""pixmo: the dataset library: pure stages from raw annotations to PixMo shards, no engines."""
