"""A small trend plot per model × mode × device: each night's median latency with its 95% CI,
one line per batch size (log scale: batch sizes differ by orders of magnitude)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from qbench.plotting import plt
from qbench.report.history import History  # noqa: E402


def plot_trends(history: History, folder: Path) -> list[Path]:
    """trend-<model>-<mode>-<device>.png for each unit seen on at least two nights."""
    by_unit: dict[tuple[str, str, str], dict[int, list]] = defaultdict(dict)
    for (model, mode, device, batch), nights in history.series.items():
        if len(nights) >= 2:
            by_unit[(model, mode, device)][batch] = nights
    days = [j for j in history.jobs]
    paths = []
    for (model, mode, device), batches in sorted(by_unit.items()):
        fig, ax = plt.subplots(figsize=(5.0, 2.6))
        for batch, nights in sorted(batches.items()):
            x = [days.index(n.job_id) for n in nights]
            y = [n.p50 for n in nights]
            err = [[max(n.p50 - (n.low if n.low is not None else n.p50), 0) for n in nights],
                   [max((n.high if n.high is not None else n.p50) - n.p50, 0) for n in nights]]
            ax.errorbar(x, y, yerr=err, marker="o", markersize=3, capsize=2, label=f"batch {batch}")
        labels = [n.day[4:] for n in max(batches.values(), key=len)]
        ticks = [days.index(n.job_id) for n in max(batches.values(), key=len)]
        ax.set_xticks(ticks, labels, fontsize=7, rotation=45)
        ax.set_yscale("log")
        ax.set_ylabel("median ms (95% CI)", fontsize=8)
        ax.set_title(f"{model} · {mode} · {device}: last {len(days)} nights", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"trend-{model}-{mode}-{device}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
