"""Typed configuration: schema, ConfigStore registration, validation."""
