"""Inference: batched generation."""
