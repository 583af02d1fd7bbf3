"""Evaluation harness: benchmarks, answer extraction and scoring."""
