"""Demo data: synthetic scenes, synthesized speech, simulated annotators (not for the core)."""
