"""Difference metrics between an fp32 activation and its quantized counterpart.

Sums are accumulated in float64 over every image and every call of a layer, so a layer's
metrics cover all inspected images without keeping their activations.

Definitions (x: fp32 values, q: quantized values dequantized to float, d = x - q):
- abs_diff_mean = mean |d|, abs_diff_max = max |d|
- rel_diff_mean = mean |d| / (|x| + eps), eps = REL_EPS * mean |x| of the same tensor
  (post-ReLU activations are mostly zeros: an absolute epsilon would let them dominate)
- cosine = sum(x q) / sqrt(sum x^2 * sum q^2); 1.0 when both are all zeros
- sqnr_db = 10 log10(sum x^2 / sum d^2); +inf when d is all zeros
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

REL_EPS = 0.1  # fraction of the tensor's mean |x| added to the denominator of rel_diff
_TINY = 1e-30  # keeps eps > 0 for an all-zero tensor


@dataclass
class LayerStats:
    """Running sums of one layer's differences; update() per call, result() at the end."""

    count: int = 0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    sum_rel: float = 0.0
    sum_xx: float = 0.0
    sum_qq: float = 0.0
    sum_xq: float = 0.0
    sum_dd: float = 0.0

    def update(self, x: torch.Tensor, q: torch.Tensor) -> None:
        if x.shape != q.shape:
            raise ValueError(f"shapes differ: fp32 {tuple(x.shape)} vs quantized {tuple(q.shape)}")
        x = x.detach().reshape(-1).double()
        q = q.detach().reshape(-1).double()
        if x.numel() == 0:
            return
        d = (x - q).abs()
        eps = REL_EPS * float(x.abs().mean()) + _TINY
        self.count += x.numel()
        self.sum_abs += float(d.sum())
        self.max_abs = max(self.max_abs, float(d.max()))
        self.sum_rel += float((d / (x.abs() + eps)).sum())
        self.sum_xx += float(x.dot(x))
        self.sum_qq += float(q.dot(q))
        self.sum_xq += float(x.dot(q))
        self.sum_dd += float(d.dot(d))

    def result(self) -> dict[str, float]:
        if self.count == 0:
            nan = math.nan
            return {"abs_diff_mean": nan, "abs_diff_max": nan, "rel_diff_mean": nan,
                    "cosine": nan, "sqnr_db": nan}
        return {
            "abs_diff_mean": self.sum_abs / self.count,
            "abs_diff_max": self.max_abs,
            "rel_diff_mean": self.sum_rel / self.count,
            "cosine": _cosine(self.sum_xq, self.sum_xx, self.sum_qq),
            "sqnr_db": sqnr_db(self.sum_xx, self.sum_dd),
        }


def _cosine(xq: float, xx: float, qq: float) -> float:
    if xx == 0.0 and qq == 0.0:
        return 1.0
    if xx == 0.0 or qq == 0.0:
        return 0.0
    return max(-1.0, min(1.0, xq / math.sqrt(xx * qq)))


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """10 log10(signal / noise): +inf without noise, -inf for noise on a zero signal."""
    if noise_energy == 0.0:
        return math.inf
    if signal_energy == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


def layer_metrics(x: torch.Tensor, q: torch.Tensor) -> dict[str, float]:
    """The metrics of one pair of tensors."""
    stats = LayerStats()
    stats.update(x, q)
    return stats.result()
