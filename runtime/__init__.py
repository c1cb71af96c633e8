"""Thin, torch-free runtime: landmark schema, preprocessing, metrics (and, later, inference backends)."""
