"""Model inputs: tokenizer, chat format, multi-crop images, token layout (``MolmoProcessor``)."""
