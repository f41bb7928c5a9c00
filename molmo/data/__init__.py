"""The training data loader: shards to tasks to batches, in a resumable order.

``config`` (the ``data:`` settings), ``order`` (which sample each slot reads), ``tasks`` (sample
to example), ``slots`` (one slot's batches), ``workers`` (thread workers), ``loader``
(``MolmoLoader``).
"""
