"""Evaluation of a trained Molmo."""
