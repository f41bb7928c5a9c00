"""Molmo: our PyTorch implementation, its preprocessing, checkpoints and training.

``molmo.from_pretrained(path)`` loads an official Hugging Face checkpoint or
one of ours; ``molmo.from_parts(llm=DIR, vision=DIR)`` joins a Hugging Face LLM
and a CLIP vision tower as the official recipe starts training;
``molmo.MolmoProcessor`` turns images and text into its inputs.
"""

from molmo.model.parts import from_parts
from molmo.model.weights import from_pretrained, save_pretrained
from molmo.preprocess.processor import MolmoProcessor

__all__ = ["MolmoProcessor", "from_parts", "from_pretrained", "save_pretrained"]
