"""Pictures of an inspection: difference heat maps, hexbins, SQNR by layer (PNG, no pyplot).

matplotlib's object API (Figure + savefig) keeps no global state, so it is safe in workers.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

import qbench.plotting  # noqa: F401 - Agg, quiet font fallbacks
from qbench.inspect.metrics import layer_metrics
from qbench.inspect.record import LayerComparison, LayerRecord

GRID_CAP = 12  # panels in the all-conv grid: 4 a row, each large enough to read at 1400 px
GRID_COLUMNS = 4
DPI = 100
_ALPHA = 0.65  # heat map over a grey copy of the image


def _figure(width: float, height: float, nrows: int, ncols: int, title_in: float = 0.9,
            left_in: float = 0.7, bottom_in: float = 0.6, right_in: float = 0.8,
            wspace: float = 0.35,
            hspace: float = 0.45, **gridspec) -> tuple[Figure, np.ndarray]:
    """A figure with a fixed grid of axes, margins in inches (constrained layout costs seconds
    per figure with several colour bars)."""
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": left_in / width, "right": 1 - right_in / width, "bottom": bottom_in / height,
        "top": 1 - title_in / height, "wspace": wspace, "hspace": hspace, **gridspec})
    return fig, axes


def _save(fig: Figure, path: Path) -> None:
    # zlib level 3: a third of the default's encoding time for a few % larger files.
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})


def _short(name: str, width: int = 30) -> str:
    return "\n".join(textwrap.wrap(name, width, break_on_hyphens=False)) or name


def _db(v: float) -> str:
    return "∞" if math.isinf(v) and v > 0 else f"{v:.1f}"


def _stride(rec: LayerRecord, canvas: tuple[float, float]) -> float:
    return canvas[0] / rec.abs_map.shape[0]


def clip_max(heats: list[np.ndarray]) -> float:
    """The colour scale's top: the 99th percentile of the finite values of all `heats`."""
    finite = np.concatenate([h[np.isfinite(h)].ravel() for h in heats]) if heats else np.zeros(0)
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    return vmax if vmax > 0 else max(float(finite.max()) if finite.size else 0.0, 1e-12)


def _overlay(fig: Figure, ax: Axes, comp: LayerComparison, heat: np.ndarray, cbar_label: str,
             cmap: str, font: float = 9, vmax: float | None = None, colorbar: bool = True):
    """Heat map (bilinear upsampled over the layer's canvas) on a grey copy of the image;
    `vmax` shares one colour scale between panels (default: this heat map's own)."""
    h, w = comp.image.shape[:2]
    ch, cw = comp.canvas
    ax.imshow(comp.image.mean(axis=2), cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
    vmax = clip_max([heat]) if vmax is None else vmax
    im = ax.imshow(heat, cmap=cmap, alpha=_ALPHA, vmin=0, vmax=vmax, extent=(0, cw, ch, 0),
                   interpolation="bilinear")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, extend="max")
        cb.set_label(cbar_label, fontsize=font)
        cb.ax.tick_params(labelsize=font - 1)
    return im


def _conv_maps(comp: LayerComparison) -> list[LayerRecord]:
    return [r for r in comp.layers if r.abs_map is not None]


def plot_first_conv(comp: LayerComparison, path: Path, label: str) -> Path | None:
    """Input image, absolute and relative difference maps of the first conv layer."""
    convs = _conv_maps(comp)
    if not convs:
        return None
    rec = convs[0]
    fig, axes = _figure(16, 5.2, 1, 3, wspace=0.45)
    axes = axes[0]
    axes[0].imshow(comp.image)
    axes[0].set_title("input image (image 1)")
    axes[0].set_xlabel("x (px)")
    axes[0].set_ylabel("y (px)")
    _overlay(fig, axes[1], comp, rec.abs_map, f"mean over channels of |fp32 − {label}|", "inferno")
    axes[1].set_title("absolute difference")
    _overlay(fig, axes[2], comp, 100 * rec.rel_map(),
             f"|fp32 − {label}| / (|fp32| + ε), mean over channels (%)", "magma")
    axes[2].set_title("relative difference (ε = 0.1 × mean |fp32|)")
    c, (mh, mw) = rec.shape[1], rec.abs_map.shape
    fig.suptitle(f"First conv layer '{rec.name}': fp32 vs {label} — {c} channels, {mh}×{mw} map "
                 f"(stride {_stride(rec, comp.canvas):g} px), SQNR {_db(rec.stats.result()['sqnr_db'])} dB"
                 "\ncolour scales clipped at the 99th percentile", fontsize=12)
    _save(fig, path)
    return path


def evenly(items: list, cap: int) -> list:
    if len(items) <= cap:
        return list(items)
    idx = sorted({int(round(i)) for i in np.linspace(0, len(items) - 1, cap)})
    return [items[i] for i in idx]


def plot_conv_grid(comp: LayerComparison, path: Path, label: str, relative: bool = False,
                   cap: int = GRID_CAP) -> Path | None:
    """One difference map per conv layer (at most `cap`, evenly spaced in network order)."""
    convs = _conv_maps(comp)
    if not convs:
        return None
    chosen = evenly(convs, cap)
    ncols = min(GRID_COLUMNS, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig, axes = _figure(3.3 * ncols + 1.2, 3.4 * nrows + 1.1, nrows, ncols, title_in=1.0,
                        left_in=0.1, bottom_in=0.1, right_in=1.3, wspace=0.12)
    axes = axes.ravel()
    what = "relative" if relative else "absolute"
    unit = "% of |fp32|" if relative else "|Δ|"
    heats = [100 * rec.rel_map() if relative else rec.abs_map for rec in chosen]
    vmax = clip_max(heats)  # one scale for the grid: panels compare with each other
    im = None
    for ax, rec, heat in zip(axes, chosen, heats, strict=False):
        im = _overlay(fig, ax, comp, heat, unit, "magma" if relative else "inferno", font=9,
                      vmax=vmax, colorbar=False)
        sqnr = _db(rec.stats.result()["sqnr_db"])
        ax.set_title(f"#{rec.index} {_short(rec.name)}\nSQNR {sqnr} dB, stride "
                     f"{_stride(rec, comp.canvas):g} px", fontsize=10)
    for ax in axes[len(chosen):]:
        ax.axis("off")
    if im is not None:
        cax = fig.add_axes((1 - 1.05 / fig.get_figwidth(), 0.1, 0.25 / fig.get_figwidth(), 0.7))
        cb = fig.colorbar(im, cax=cax, extend="max")
        cb.set_label(unit, fontsize=10)
    shown = (f"all {len(convs)} conv layers" if len(chosen) == len(convs) else
             f"{len(chosen)} of {len(convs)} conv layers, evenly spaced in network order")
    fig.suptitle(f"{what.capitalize()} difference fp32 vs {label} per conv layer, mean over "
                 f"channels, image 1 — {shown}\none colour scale for every panel "
                 "(clipped at the grid's 99th percentile)", fontsize=12)
    _save(fig, path)
    return path


def chosen_layers(comp: LayerComparison) -> list[LayerRecord]:
    """First, worst (lowest SQNR), median and last layer, without repeats."""
    if not comp.layers:
        return []
    by_sqnr = sorted(comp.layers, key=lambda r: r.stats.result()["sqnr_db"])
    picks = [comp.layers[0], by_sqnr[0], by_sqnr[len(by_sqnr) // 2], comp.layers[-1]]
    out: list[LayerRecord] = []
    for r in picks:
        if r not in out:
            out.append(r)
    return sorted(out, key=lambda r: r.index)


def _hexbin(fig: Figure, ax: Axes, x: np.ndarray, q: np.ndarray, title: str, label: str,
            unit: str = "") -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"fp32{unit}")
    ax.set_ylabel(f"{label}{unit}")
    ok = np.isfinite(x) & np.isfinite(q)
    x, q = x[ok], q[ok]
    if x.size == 0:
        ax.text(0.5, 0.5, "nothing to compare\n(no matched values)", ha="center", va="center",
                transform=ax.transAxes)
        return
    lo, hi = float(min(x.min(), q.min())), float(max(x.max(), q.max()))
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    hb = ax.hexbin(x, q, gridsize=60, bins="log", mincnt=1, cmap="viridis",
                   extent=(lo, hi, lo, hi))
    ax.plot([lo, hi], [lo, hi], color="red", lw=1, ls="--", label="y = x (no error)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    cb = fig.colorbar(hb, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("values per hexagon (log scale)", fontsize=8)
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    cb.ax.yaxis.set_minor_formatter(NullFormatter())


def plot_layer_hexbins(comp: LayerComparison, path: Path, label: str) -> Path | None:
    recs = chosen_layers(comp)
    if not recs:
        return None
    fig, axes = _figure(5 * len(recs), 5.4, 1, len(recs), title_in=1.1, wspace=0.5)
    axes = axes[0]
    for ax, rec in zip(axes, recs, strict=True):
        x, q = rec.samples()
        m = rec.stats.result()
        _hexbin(fig, ax, x, q, f"#{rec.index} {_short(rec.name, 36)}\nSQNR {_db(m['sqnr_db'])} dB, "
                f"cosine {m['cosine']:.4f}, {x.size:,} values", label, " activation")
    fig.suptitle(f"Activations fp32 vs {label}: first, worst (lowest SQNR), median and last "
                 "layer — points on the red line are unchanged by quantization"
                 + (f"\n{comp.note}" if comp.note else ""), fontsize=11)
    _save(fig, path)
    return path


def plot_output_hexbins(comp: LayerComparison, path: Path, label: str) -> Path | None:
    if not comp.outputs:
        return None
    fig, axes = _figure(5.2 * len(comp.outputs), 5.4, 1, len(comp.outputs), title_in=1.1,
                        wspace=0.5)
    axes = axes[0]
    for ax, (name, (x, q)) in zip(axes, comp.outputs.items(), strict=True):
        sub = f"{x.size:,} values"
        if x.size:
            m = layer_metrics(torch.from_numpy(x), torch.from_numpy(q))
            sub += f", SQNR {_db(m['sqnr_db'])} dB, max |Δ| {m['abs_diff_max']:.3g}"
        _hexbin(fig, ax, x, q, f"{name}\n{sub}", label)
    fig.suptitle(f"Final outputs fp32 vs {label} (detections matched one to one: same label, "
                 "IoU ≥ 0.5)", fontsize=11)
    _save(fig, path)
    return path


def group_of(name: str) -> str:
    """The part a layer belongs to, for colouring: backbone.body, rpn.head, layer3, ..."""
    parts = [p for p in name.replace("/", ".").split(".") if p]
    if not parts:
        return name
    return ".".join(parts[:2]) if parts[0] in {"backbone", "rpn", "roi_heads"} else parts[0]


def plot_sqnr(comp: LayerComparison, path: Path, label: str) -> Path | None:
    """SQNR and cosine by layer in network order; the worst layer is annotated."""
    if not comp.layers:
        return None
    idx = np.array([r.index for r in comp.layers])
    metrics = [r.stats.result() for r in comp.layers]
    sqnr = np.array([m["sqnr_db"] for m in metrics])
    cos = np.array([m["cosine"] for m in metrics])
    finite = sqnr[np.isfinite(sqnr)]
    top = (finite.max() + 5) if finite.size else 60.0
    bottom = min(finite.min() - 5, 0.0) if finite.size else 0.0
    shown = np.clip(np.where(np.isposinf(sqnr), top, sqnr), bottom, top)
    fig, axes = _figure(max(10.0, 0.12 * len(idx) + 6), 7.8, 2, 1, title_in=0.9, left_in=0.9,
                        right_in=0.3,
                        hspace=0.08, height_ratios=(2, 1))
    ax, ax2 = axes[:, 0]
    ax.sharex(ax2)
    ax.tick_params(labelbottom=False)
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.plot(idx, shown, color="0.6", lw=1, zorder=1)
    groups = list(dict.fromkeys(group_of(r.name) for r in comp.layers))
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    # handles passed explicitly: matplotlib drops labels that start with "_" (EfficientNet's
    # "_blocks", "_conv_head") from an automatic legend
    handles, labels = [], []
    for g in groups:
        sel = np.array([group_of(r.name) == g for r in comp.layers])
        fin = sel & np.isfinite(sqnr)
        handles.append(ax.scatter(idx[fin], shown[fin], s=22, color=colours[g], zorder=2))
        labels.append(g)
        ax2.scatter(idx[sel], cos[sel], s=14, color=colours[g], zorder=2)
    inf = np.isposinf(sqnr)
    if inf.any():
        handles.append(ax.scatter(idx[inf], shown[inf], marker="^", s=40, color="k"))
        labels.append("identical (SQNR = ∞)")
    if finite.size:
        worst = int(np.argmin(np.where(np.isfinite(sqnr), sqnr, np.inf)))
        ax.annotate(f"worst: {comp.layers[worst].name}\n{sqnr[worst]:.1f} dB",
                    xy=(idx[worst], shown[worst]), xytext=(0.5, 0.12), textcoords="axes fraction",
                    ha="center", arrowprops={"arrowstyle": "->", "color": "red"}, color="red")
    ax.set_ylim(bottom, top + 2)
    ax.set_ylabel("SQNR (dB, higher is better)")
    note = f"\n{comp.note}" if comp.note else ""
    ax.set_title(f"Where quantization error grows: fp32 vs {label}, {len(idx)} layers in network "
                 f"order\ncumulative: each layer gets the quantized outputs of the layers before "
                 f"it{note}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=8, ncol=min(4, len(groups) + 1), loc="upper right")
    ax2.plot(idx, cos, color="0.6", lw=1, zorder=1)
    ax2.set_ylabel("cosine similarity")
    ax2.set_xlabel("layer index (network order; colours: model part)")
    ax2.grid(alpha=0.3)
    _save(fig, path)
    return path


def render_all(comp: LayerComparison, out_dir: Path, label: str) -> list[Path]:
    """Every picture of an inspection that has something to show, written under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [
        plot_first_conv(comp, out_dir / "first_conv_diff.png", label),
        plot_conv_grid(comp, out_dir / "conv_grid_abs.png", label),
        plot_conv_grid(comp, out_dir / "conv_grid_rel.png", label, relative=True),
        plot_layer_hexbins(comp, out_dir / "hexbin_layers.png", label),
        plot_output_hexbins(comp, out_dir / "hexbin_outputs.png", label),
        plot_sqnr(comp, out_dir / "sqnr_by_layer.png", label),
    ]
    return [p for p in made if p is not None]
