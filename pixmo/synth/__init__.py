"""Demo data: synthetic scenes, synthesized speech and simulated annotators (never imported by the core)."""
