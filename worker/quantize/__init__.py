"""Quantization modes; see registry.py."""
