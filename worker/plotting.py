"""matplotlib set up once for every plot of qbench: the Agg backend (no display on workers), and
quiet font fallbacks (a matplotlib without its STIX/Computer Modern fonts falls back to DejaVu
Sans for tick labels, and says so on every log-scale axis of every process)."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
