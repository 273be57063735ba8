"""Report plots (matplotlib, headless): one PNG each, readable at a glance."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from qbench.plotting import plt

MIB = 1024 * 1024

Variant = tuple[str, str, str]  # model, mode, device


def variant_colours(keys) -> dict[Variant, str]:
    """One colour per variant, the same in every plot of the report (sorted, tab10 order)."""
    palette = plt.get_cmap("tab10").colors
    return {k: palette[i % len(palette)] for i, k in enumerate(sorted(set(keys)))}


def _colours_of(rows: list[dict]) -> dict[Variant, str]:
    return variant_colours((r["model_id"], r["mode"], r["device"]) for r in rows)


def _label(key: Variant) -> str:
    return " · ".join(key)


def _series(rows: list[dict], value: str) -> dict[Variant, list[tuple[int, float]]]:
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


def _lines(ax, series, colours) -> None:
    for key, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(key),
                color=colours[key])


def _bars(ax, series, colours, title: str, unit: str) -> None:
    """One batch size: a bar per variant (lone points on a line plot say nothing)."""
    keys = list(series)
    ax.bar(range(len(keys)), [series[k][0][1] for k in keys], color=[colours[k] for k in keys])
    ax.set_xticks(range(len(keys)), [k[1] for k in keys], rotation=20, ha="right")
    batch = next(iter(series.values()))[0][0]
    ax.set_title(f"{title}, batch {batch}")
    ax.set_ylabel(unit)
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)


def _single_batch(series) -> bool:
    return len({b for pts in series.values() for b, _ in pts}) == 1


def _finish(fig, target: Path) -> Path:
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def plot_latency(rows: list[dict], target: Path) -> Path | None:
    latency, throughput = _series(rows, "latency_ms_p50"), _series(rows, "throughput_ips")
    if not latency:
        return None
    colours = _colours_of(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    if _single_batch(latency):
        _bars(a, latency, colours, "Latency per batch (p50)", "ms")
        if throughput:
            _bars(b, throughput, colours, "Throughput", "images / s")
        return _finish(fig, target)
    _lines(a, latency, colours)
    _lines(b, throughput, colours)
    _batch_axes((a, b), [("Latency per batch (p50, log scale)", "ms"),
                         ("Throughput", "images / s")], latency)
    a.set_yscale("log")
    b.set_ylim(bottom=0)  # a ratio of throughputs must look like one
    (b if throughput else a).legend(fontsize=8)
    return _finish(fig, target)


def plot_speedup(rows: list[dict], target: Path) -> Path | None:
    """Speedup over the fastest fp32 baseline against batch size, with its 95% interval."""
    pts = defaultdict(list)
    for r in rows:
        value = r.get("speedup_vs_fastest_fp32_paired")
        lo, hi = r.get("speedup_vs_fastest_fp32_ci_low"), r.get("speedup_vs_fastest_fp32_ci_high")
        if r.get("batch_size") is None or value is None or lo is None or hi is None:
            continue
        if r["mode"] == r.get("fastest_fp32_mode"):
            continue  # 1 against itself
        pts[(r["model_id"], r["mode"], r["device"])].append((r["batch_size"], value, lo, hi))
    if not pts:
        return None
    colours = _colours_of(rows)
    batches = sorted({p[0] for v in pts.values() for p in v})
    fig, ax = plt.subplots(figsize=(8, 4.4))
    keys = sorted(pts)
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        series = sorted(pts[key])
        x = [batches.index(p[0]) + (i - (len(keys) - 1) / 2) * width for p in series]
        y = [p[1] for p in series]
        err = [[p[1] - p[2] for p in series], [p[3] - p[1] for p in series]]
        if len(batches) == 1:
            ax.bar(x, y, width=width * 0.9, yerr=err, capsize=4, color=colours[key],
                   label=_label(key))
        else:
            ax.errorbar(x, y, yerr=err, marker="o", capsize=4, color=colours[key],
                        label=_label(key))
    ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("speedup (x), 95% interval")
    ax.set_ylim(bottom=0)
    ax.set_title("Speedup over the fastest fp32 baseline")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, target)


def plot_memory(rows: list[dict], target: Path) -> Path | None:
    rss = _series(rows, "rss_peak_mb")
    cuda = _series(rows, "cuda_max_allocated_mb")
    if not rss and not cuda:
        return None
    colours = _colours_of(rows)
    panels = [(rss, ("Process RSS peak", "MiB"))] + ([(cuda, ("CUDA allocated peak", "MiB"))] if cuda else [])
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    if _single_batch(panels[0][0]):
        for ax, (series, (title, unit)) in zip(axes[0], panels, strict=True):
            _bars(ax, series, colours, title, unit)
        return _finish(fig, target)
    for ax, (series, _) in zip(axes[0], panels, strict=True):
        _lines(ax, series, colours)
        ax.set_ylim(bottom=0)
    _batch_axes(axes[0], [p[1] for p in panels], panels[0][0])
    for ax in axes[0]:
        ax.set_ylim(bottom=0)
    axes[0][-1].legend(fontsize=8)
    return _finish(fig, target)


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
    colours = _colours_of(models)
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for m in pts:
        ax.scatter(m["size_bytes"] / MIB, m[metric], s=40,
                   color=colours[(m["model_id"], m["mode"], m["device"])])
        ax.annotate(f"{m['model_id']} {m['mode']}", (m["size_bytes"] / MIB, m[metric]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("model size (MiB)")
    ax.set_ylabel(label)
    ax.set_xlim(left=0)  # sizes compare as ratios: the axis starts at nothing
    ax.set_ylim(*accuracy_limits([m[metric] for m in pts]))
    ax.set_title(f"Size vs {label}")
    ax.grid(True, alpha=0.3)
    return _finish(fig, target)
