"""What one inspection keeps per layer: metrics, a heat map of the first image, value samples.

Torch hooks and ONNX Runtime outputs both feed a LayerRecord, so the rows and the pictures
do not depend on where the activations came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from qbench.inspect.metrics import REL_EPS, LayerStats

SAMPLES_PER_CALL = 20_000  # fp32/quantized value pairs kept per call for the hexbin plots
SAMPLES_MAX = 60_000


@dataclass
class LayerRecord:
    name: str  # the fp32 model's qualified name (torch) or node name (ONNX)
    kind: str  # "conv" | "linear"
    index: int  # network order: position of the layer's first call in the fp32 run
    shape: list[int] = field(default_factory=list)  # output of one image's first call
    stats: LayerStats = field(default_factory=LayerStats)
    # First image, first call, conv only: mean over channels of |x - q| and of |x|, (H, W).
    abs_map: np.ndarray | None = None
    ref_map: np.ndarray | None = None
    _x: list[torch.Tensor] = field(default_factory=list, repr=False)
    _q: list[torch.Tensor] = field(default_factory=list, repr=False)

    def update(self, x: torch.Tensor, q: torch.Tensor, first: bool) -> None:
        """Add one call's output pair; `first`: first call of the first image."""
        x, q = x.detach().float().cpu(), q.detach().float().cpu()
        self.stats.update(x, q)
        if first:
            self.shape = list(x.shape)
            if self.kind == "conv" and x.dim() == 4:
                self.abs_map = (x[0] - q[0]).abs().mean(0).numpy()
                self.ref_map = x[0].abs().mean(0).numpy()
        flat_x, flat_q = x.reshape(-1), q.reshape(-1)
        if flat_x.numel() > SAMPLES_PER_CALL:
            g = torch.Generator().manual_seed(self.index * 7919 + len(self._x))
            idx = torch.randperm(flat_x.numel(), generator=g)[:SAMPLES_PER_CALL]
            flat_x, flat_q = flat_x[idx], flat_q[idx]
        self._x.append(flat_x.clone())
        self._q.append(flat_q.clone())

    def rel_map(self) -> np.ndarray | None:
        """Relative heat map: mean |d| / (mean |x| + eps), eps as in metrics.REL_EPS."""
        if self.abs_map is None or self.ref_map is None:
            return None
        eps = REL_EPS * float(self.ref_map.mean()) + 1e-30
        return self.abs_map / (self.ref_map + eps)

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Up to SAMPLES_MAX (fp32, quantized) value pairs drawn over all calls."""
        if not self._x:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        x, q = torch.cat(self._x), torch.cat(self._q)
        if x.numel() > SAMPLES_MAX:
            g = torch.Generator().manual_seed(self.index)
            idx = torch.randperm(x.numel(), generator=g)[:SAMPLES_MAX]
            x, q = x[idx], q[idx]
        return x.numpy(), q.numpy()

    def row(self) -> dict:
        """A `layers` row without the identity and environment columns."""
        return {"layer": self.name, "layer_index": self.index, "kind": self.kind,
                "shape": [int(s) for s in self.shape], **self.stats.result()}


@dataclass
class LayerComparison:
    """Everything the rows and the pictures need from one fp32 vs quantized inspection."""

    layers: list[LayerRecord]  # network order
    image: np.ndarray  # first image, HxWx3 in [0, 1]
    # The layers' input canvas in first-image pixels (h, w): larger than the image where a
    # detector's transform padded it, so heat maps line up with the picture.
    canvas: tuple[float, float]
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # unpaired layers, with the reason
    note: str = ""  # how the comparison was made, shown under the plots' titles

    def rows(self) -> list[dict]:
        return [r.row() for r in self.layers]

    def drop(self, prefix: str, reason: str) -> None:
        """Leave out the layers under `prefix` (with the reason) and renumber the rest."""
        gone = [r for r in self.layers if r.name.startswith(prefix)]
        self.skipped += [f"{r.name}: {reason}" for r in gone]
        self.layers = [r for r in self.layers if not r.name.startswith(prefix)]
        for i, rec in enumerate(self.layers):
            rec.index = i


def image_hwc(image: torch.Tensor) -> np.ndarray:
    """CHW tensor in [0, 1] to an HxWx3 array for matplotlib."""
    arr = image.detach().float().cpu().clamp(0, 1).numpy()
    arr = arr.transpose(1, 2, 0)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]
