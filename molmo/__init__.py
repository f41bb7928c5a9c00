"""Molmo: our PyTorch implementation, its preprocessing, checkpoints and training.

``molmo.from_pretrained(path)`` loads an official Hugging Face checkpoint or
one of ours; ``molmo.MolmoProcessor`` turns images and text into its inputs.
"""

from molmo.model.weights import from_pretrained, save_pretrained
from molmo.preprocess.processor import MolmoProcessor

__all__ = ["MolmoProcessor", "from_pretrained", "save_pretrained"]
