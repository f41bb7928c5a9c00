"""Model inputs: tokenizer, chat format, multi-crop images, token layout (``MolmoProcessor``).

``config`` (``PreprocessConfig``), ``tokenizer``, ``chat``, ``crops`` (image math),
``processor`` (one example's arrays) and ``batching`` (``collate``, ``normalize_images``).
"""
