"""qbench: quantize vision models and benchmark them against the original."""

__version__ = "0.1.0"
