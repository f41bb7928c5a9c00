"""The build's stages, engine-free: raw annotations in, shards, manifest and rejects ledger out."""
