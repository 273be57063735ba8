"""How a search's scores are printed: in notes, progress lines and plots alike."""

from __future__ import annotations


def score_text(value: float) -> str:
    """Three decimals, or up to six significant digits where three would hide the difference
    (a 0.99999 target printed as 1.000)."""
    return f"{value:.3f}" if abs(value - round(value, 3)) < 5e-7 else f"{value:.6g}"
