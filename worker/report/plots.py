"""Report plots (matplotlib, headless): one PNG each, readable at a glance."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from worker.plotting import plt

MB = 1024 * 1024


def _series(rows: list[dict], value: str) -> dict[tuple, list[tuple[int, float]]]:
    series = defaultdict(list)
    for r in rows:
        if r.get("batch_size") is not None and r.get("status") == "ok" and r.get(value):
            series[(r["model_id"], r["mode"], r["device"])].append((r["batch_size"], r[value]))
    return {k: sorted(v) for k, v in sorted(series.items())}


def _batch_axes(axes, titles_units, series) -> None:
    batches = sorted({b for pts in series.values() for b, _ in pts})
    for ax, (title, unit) in zip(axes, titles_units, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size (log scale)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)


def _lines(ax, series) -> None:
    for (model, mode, device), pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=f"{model} · {mode} · {device}")


def plot_latency(rows: list[dict], target: Path) -> Path | None:
    latency, throughput = _series(rows, "latency_ms_p50"), _series(rows, "throughput_ips")
    if not latency:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    _lines(a, latency)
    _lines(b, throughput)
    _batch_axes((a, b), [("Latency per batch (p50)", "ms"), ("Throughput", "images / s")], latency)
    a.set_yscale("log")
    (b if throughput else a).legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def plot_memory(rows: list[dict], target: Path) -> Path | None:
    rss = _series(rows, "rss_peak_mb")
    cuda = _series(rows, "cuda_max_allocated_mb")
    if not rss and not cuda:
        return None
    panels = [(rss, ("Process RSS peak", "MB"))] + ([(cuda, ("CUDA allocated peak", "MB"))] if cuda else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    for ax, (series, _) in zip(axes[0], panels, strict=True):
        _lines(ax, series)
    _batch_axes(axes[0], [p[1] for p in panels], rss or cuda)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


# Accuracy axes span at least 10 points: a change of a few tenths of a point must look like
# one, not fill the plot like a cliff.
MIN_ACCURACY_SPAN = 0.10


def accuracy_limits(values: list[float], min_span: float = MIN_ACCURACY_SPAN
                    ) -> tuple[float, float]:
    """y limits for scores in [0, 1]: the points with a margin, at least min_span wide, and
    never outside [0, 1]."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, min_span)
    mid = (lo + hi) / 2
    lo, hi = mid - span / 2 - 0.1 * span, mid + span / 2 + 0.1 * span
    if lo < 0:
        lo, hi = 0.0, min(1.0, hi - lo)
    if hi > 1:
        lo, hi = max(0.0, lo - (hi - 1)), 1.0
    return lo, hi


def plot_size_accuracy(models: list[dict], target: Path) -> Path | None:
    """Size vs accuracy (mAP, else top-1, else agreement with fp32): the trade-off per unit."""
    choices = (("map", "mAP@[.5:.95]"), ("top1", "top-1"),
               ("agreement_recall", "recall of fp32 detections"))
    found = next(((metric, label, pts) for metric, label in choices
                  if (pts := [m for m in models if m["status"] == "ok" and m[metric] is not None
                              and m["size_bytes"]])), None)
    if found is None:
        return None
    metric, label, pts = found
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for m in pts:
        ax.scatter(m["size_bytes"] / MB, m[metric], s=40)
        ax.annotate(f"{m['model_id']} {m['mode']}", (m["size_bytes"] / MB, m[metric]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("model size (MB)")
    ax.set_ylabel(label)
    ax.set_xlim(left=0)  # sizes compare as ratios: the axis starts at nothing
    ax.set_ylim(*accuracy_limits([m[metric] for m in pts]))
    ax.set_title(f"Size vs {label}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
