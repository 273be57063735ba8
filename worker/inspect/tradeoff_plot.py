"""The mixed-precision trade-off as a picture: score against latency for every configuration."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

import qbench.plotting  # noqa: F401 - Agg, quiet font fallbacks
from qbench.quantize.score_text import score_text

if TYPE_CHECKING:
    from qbench.quantize.mixed_search import MixedPrecision, SensitivityResult, Trial
    from qbench.quantize.ov_accuracy_control import AccuracyControl


def _x(trial: Trial, by_latency: bool) -> float:
    return trial.latency_ms if by_latency else trial.size_bytes / 1e6


def _names(groups: tuple[str, ...], shown: int = 3) -> str:
    if not groups:
        return "all quantized"
    more = f" + {len(groups) - shown} more" if len(groups) > shown else ""
    return ", ".join(groups[:shown]) + more + " float"


def plot_tradeoff(sens: SensitivityResult, search: MixedPrecision, path: Path,
                  score_name: str = "agreement with fp32", reference: Trial | None = None) -> Path:
    """Every trial (grey), the greedy path (blue), the chosen configuration (red star), the
    target (dashed) and, if given, the fp32 reference. Without latencies, x is the size."""
    trials = list(sens.evaluate.trials.values())
    if reference is not None:
        trials.append(reference)
    by_latency = all(t.latency_ms is not None and math.isfinite(t.latency_ms) for t in trials)
    fig = Figure(figsize=(10, 6.5))
    ax = fig.subplots(gridspec_kw={"left": 0.09, "right": 0.97, "bottom": 0.1, "top": 0.88})
    singles = [t for t in sens.evaluate.trials.values() if len(t.float_groups) == 1]
    ax.scatter([_x(t, by_latency) for t in singles], [t.score for t in singles], color="0.6",
               s=25, label="one group kept float (sensitivity ranking)", zorder=2)
    for t in singles:
        ax.annotate(t.float_groups[0], (_x(t, by_latency), t.score), fontsize=7, color="0.4",
                    xytext=(4, 2), textcoords="offset points")
    on_path = set(search.path)
    rejected = [t for t in sens.evaluate.trials.values()
                if len(t.float_groups) > 1 and t not in on_path]
    if rejected:
        ax.scatter([_x(t, by_latency) for t in rejected], [t.score for t in rejected],
                   marker="x", color="0.7", s=30, label="tried by the search, did not help")
    xs, ys = [_x(t, by_latency) for t in search.path], [t.score for t in search.path]
    ax.plot(xs, ys, "-o", color="C0", zorder=3,
            label="greedy: most sensitive groups kept float, then refined to smaller groups")
    for t, x, y in zip(search.path, xs, ys, strict=True):
        ax.annotate(f"{len(t.float_groups)} float", (x, y), fontsize=8, color="C0",
                    xytext=(4, -10), textcoords="offset points")
    chosen = search.chosen
    ax.scatter([_x(chosen, by_latency)], [chosen.score], marker="*", s=260, color="red", zorder=4,
               label=f"chosen: {_names(chosen.float_groups)}")
    if reference is not None:
        ax.scatter([_x(reference, by_latency)], [reference.score], marker="D", s=60, color="k",
                   zorder=4, label="fp32")
    ax.axhline(search.target, color="red", ls="--", lw=1, label=f"target {search.target:.3g}")
    ax.set_xlabel("latency p50 (ms)" if by_latency else "model size (MB)")
    ax.set_ylabel(f"{score_name} (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    status = "met" if search.met else "NOT met"
    ax.set_title(f"Mixed precision trade-off: target {status} with {len(chosen.float_groups)} "
                 f"group(s) float\n{score_name} {chosen.score:.3g}, size {chosen.size_bytes / 1e6:.1f} MB"
                 + (f", {chosen.latency_ms:.1f} ms" if chosen.latency_ms is not None else ""))
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 3})
    return path


def plot_accuracy_control(outcome: AccuracyControl, path: Path) -> Path:
    """Each model NNCF's accuracy control scored, in order: its score against how many
    conv/matmul layers ran in float, the target (dashed) and the float model's score."""
    runs = outcome.validations
    fig = Figure(figsize=(10, 6.5))
    ax = fig.subplots(gridspec_kw={"left": 0.12, "right": 0.97, "bottom": 0.1, "top": 0.88})
    xs, ys = [v.float_layers for v in runs], [v.score for v in runs]
    ax.plot(xs, ys, "-", color="C0", alpha=0.3, zorder=2)
    ax.scatter(xs, ys, color="C0", zorder=3, label="models NNCF scored (numbered in order)")
    for k, (x, y) in enumerate(zip(xs, ys, strict=True), start=1):
        ax.annotate(str(k), (x, y), fontsize=7, color="0.4", xytext=(4, 2),
                    textcoords="offset points")
    ax.scatter([xs[-1]], [ys[-1]], marker="*", s=260, color="red", zorder=4, label="chosen")
    ax.axhline(outcome.target.value, color="red", ls="--", lw=1,
               label=f"target {score_text(outcome.target.value)}")
    ax.axhline(outcome.float_score, color="k", ls=":", lw=1,
               label=f"float model {score_text(outcome.float_score)}")
    ax.set_xlabel("conv/matmul layers run in float")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylabel(textwrap.fill(f"{outcome.target.name} (higher is better)", 50))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.set_title(f"NNCF accuracy control: target {'met' if outcome.met else 'NOT met'} with "
                 f"{len(outcome.float_groups)} weight layer(s) put back in float\n"
                 f"{outcome.target.name} {score_text(outcome.chosen_score)}")
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 3})
    return path
