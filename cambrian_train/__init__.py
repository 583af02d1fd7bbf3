"""cambrian-train: training framework for vision-connector multimodal LLMs (Cambrian-1 style)."""

__version__ = "0.1.0"
