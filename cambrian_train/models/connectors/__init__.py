"""Connectors from vision features to LLM tokens (registered in CONNECTORS)."""
