"""Datasets, accuracy metrics and agreement with fp32."""
