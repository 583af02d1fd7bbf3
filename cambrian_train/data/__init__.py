"""Data pipeline: LLaVA records → static-shape batches, and the synthetic data engine."""
