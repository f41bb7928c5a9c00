"""Model inputs: tokenizer, chat format, multi-crop images and the token layout (``MolmoProcessor``)."""
