"""The report job: Parquet rows -> report.md, report.html (self-contained), summary.csv, plots."""

from __future__ import annotations

import csv
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from qbench.atomic import write_text_atomic
from qbench.manifest import check_job_id
from qbench.report.blocks import (
    Block,
    Bullets,
    Heading,
    Image,
    Links,
    Para,
    Table,
    to_html,
    to_markdown,
)
from qbench.report.classes import class_blocks, summary_columns, threshold_pts
from qbench.report.compare import (
    Comparison,
    Thresholds,
    compare_jobs,
    comparison_blocks,
    previous_nightly,
)
from qbench.report.history import load_history, night_spread, step_regressions
from qbench.report.method import how_measured
from qbench.report.pairs import pairs_blocks
from qbench.report.plots import plot_latency, plot_memory, plot_size_accuracy, plot_speedup
from qbench.report.recommend import Target, recommend
from qbench.report.speedup import attach_pairs
from qbench.report.tables import (
    STABLE_LEGEND,
    latency_table,
    size_accuracy_table,
    summary_rows,
    unit_order,
    without_empty_columns,
)
from qbench.report.trend_plot import plot_trends
from qbench.report.verdict import first_screen
from qbench.results import read_table, unit_file, write_rows

__all__ = ["Report", "Thresholds", "build_report", "report_folder", "write_report"]


@dataclass
class Report:
    job_id: str
    folder: Path
    blocks: list[Block]
    rows: list[dict]
    comparison: Comparison | None
    recommendations: list[dict]

    @property
    def markdown(self) -> str:
        return to_markdown(self.blocks, self.folder)

    @property
    def files(self) -> list[Path]:
        """What write_report writes (the plots are the report's Image blocks)."""
        return [self.folder / name for name in ("report.md", "report.html", "summary.csv")]

    @property
    def regressions(self) -> list[str]:
        return self.comparison.regressions if self.comparison else []


def report_folder(root: Path, job_id: str) -> Path:
    return root / "reports" / check_job_id(job_id)  # a name, never a path


# PNG bytes of inspection pictures embedded in report.html (base64 adds a third): with the
# report's own plots the quickstart's page stays under 3 MB.
INSPECT_BUDGET_BYTES = 1_600_000
# Summary pictures first: per-layer SQNR and the hexbins read at a glance; the grids last.
PICTURE_ORDER = ("sqnr_by_layer", "hexbin_outputs", "hexbin_layers", "mixed_precision_tradeoff",
                 "first_conv_diff", "conv_grid_abs", "conv_grid_rel")


def inspection_images(folder: Path) -> list[Path]:
    """Pictures the inspection step left under <report>/inspect/, in a stable order: regular
    files really inside it only, so a symlink planted there never puts another file's bytes
    into report.html."""
    inspect = folder / "inspect"
    try:
        real_inspect = inspect.resolve(strict=True)
    except (OSError, RuntimeError):
        return []
    if inspect.is_symlink():
        return []
    pictures = []
    for path in inspect.glob("**/*.png"):
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if (path.is_symlink() or real_inspect not in real.parents
                or real.relative_to(real_inspect) != path.relative_to(inspect)
                or not stat.S_ISREG(os.lstat(path).st_mode)):
            continue
        pictures.append(path)
    return sorted(pictures)


def within_budget(pictures: list[Path], budget: int) -> tuple[list[Path], list[Path]]:
    """(embedded, linked): summary pictures first, each unit's in turn, until the budget."""
    def rank(p: Path) -> tuple:
        kind = next((i for i, k in enumerate(PICTURE_ORDER) if p.stem.startswith(k)),
                    len(PICTURE_ORDER))
        return (kind, str(p))

    shown, linked, used = [], [], 0
    for p in sorted(pictures, key=rank):
        size = p.stat().st_size
        if used + size <= budget:
            shown.append(p)
            used += size
        else:
            linked.append(p)
    order = {p: i for i, p in enumerate(pictures)}
    return sorted(shown, key=order.get), sorted(linked, key=order.get)


def build_report(root: Path, job_id: str, compare_with: str | None = None,
                 thresholds: Thresholds = Thresholds()) -> Report:
    models = read_table(root, "models", job_id).to_pylist()
    latency = read_table(root, "latency", job_id).to_pylist()
    pairs = read_table(root, "pairs", job_id).to_pylist()
    attach_pairs(latency, pairs)  # variant over variant: their own measured pairs first
    classes = read_table(root, "class_metrics", job_id).to_pylist()
    folder = report_folder(root, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    target_spec = _target(root, job_id)
    threshold = threshold_pts(target_spec.max_map_drop if target_spec else None)
    reference = _reference(root, job_id)
    rows = summary_rows(models, latency, reference)
    for row, m in _rows_with_units(rows, models):
        row.update(summary_columns(m, classes, threshold))
    recs = recommend(models, latency, rows, Target.of(target_spec))
    _mark_recommended(rows, recs)
    base = compare_with or previous_nightly(root, job_id)
    nights = load_history(root, job_id)  # empty unless job_id is a nightly with a history
    comparison = (compare_jobs(root, base, job_id, thresholds, night_spread(nights, job_id, base))
                  if base else None)
    history = nights if compare_with is None else None  # steps and trends: nightly reports
    if comparison is not None and history is not None and history.jobs:
        comparison.regressions += step_regressions(history, thresholds.latency_pct)

    blocks: list[Block] = [Heading(f"qbench report: {job_id}", 1)]
    blocks += first_screen(job_id, models, latency, rows, recs,
                           comparison.regressions if comparison else [], base,
                           history if comparison else None,
                           later=[p["measured_at"] for p in pairs])  # the timings' ends
    if comparison and comparison.regressions:
        blocks.append(Para(f"{len(comparison.regressions)} regression(s) against {base}:", alert=True))
        blocks.append(Bullets(comparison.regressions))
    failed = [m for m in models if m["status"] != "ok"]
    oom = [r for r in latency if r["status"] == "oom"]
    if failed:
        blocks.append(Para(f"{len(failed)} unit(s) failed: "
                           + "; ".join(f"{m['model_id']} {m['mode']}: {m['error']}" for m in failed),
                           alert=True))
    if oom:
        blocks.append(Para("Out of memory at: " + ", ".join(
            f"{r['model_id']} {r['mode']} batch {r['batch_size']}" for r in oom), alert=True))
    if not models:
        blocks.append(Para("No unit of this job has written a row yet."))
    blocks += [Heading("Size and accuracy"), without_empty_columns(size_accuracy_table(models, latency, reference)),
               *class_blocks(models, classes, threshold),
               Heading("Latency, throughput and memory"), without_empty_columns(latency_table(rows, reference)),
               Para(STABLE_LEGEND), *pairs_blocks(pairs)]
    for plot, name, alt in ((plot_speedup, "speedup.png", "speedup vs batch size, 95% intervals"),
                            (plot_latency, "latency.png", "latency and throughput vs batch size"),
                            (plot_memory, "memory.png", "memory vs batch size")):
        if plot(rows, folder / name):
            blocks.append(Image(Path(name), alt))
    if plot_size_accuracy(models, folder / "size_accuracy.png"):
        blocks.append(Image(Path("size_accuracy.png"), "size vs accuracy"))
    notes = [f"{m['model_id']} {m['mode']}: {m['notes']}" for m in sorted(models, key=unit_order)
             if m["notes"] and m["status"] == "ok"]
    if notes:
        blocks += [Heading("What was quantized, what stayed float"), Bullets(notes)]
    saved = [m for m in sorted(models, key=unit_order) if m.get("artifact_path")]
    if saved:
        blocks += [Heading("Artifacts: the models that were benchmarked"),
                   Table(["model", "mode", "device", "file", "format", "sha256"],
                         [[m["model_id"], m["mode"], m["device"], f"`{m['artifact_path']}`",
                           m["artifact_format"], f"`{m['artifact_sha256'][:16]}…`"] for m in saved]),
                   Para(f"Files are under `{root}/`; `qbench export {job_id} --to DIR` copies them "
                        "with a JSON card each, after checking their sha256.")]
    pictures = inspection_images(folder)
    if pictures:
        shown, linked = within_budget(pictures, INSPECT_BUDGET_BYTES)
        blocks.append(Heading("Where quantization hurts"))
        blocks += [Image(p.relative_to(folder), p.stem.replace("_", " ")) for p in shown]
        if linked:
            blocks.append(Links(f"{len(linked)} more picture(s), beside the report (left out of "
                                "the page to keep it small):",
                                [p.relative_to(folder) for p in linked]))
    if comparison:
        blocks += comparison_blocks(comparison, thresholds)
    trends = plot_trends(history, folder) if history and len(history.jobs) >= 2 else []
    if trends:
        blocks.append(Heading(f"Latency over the last {len(history.jobs)} nights"))
        blocks += [Image(p.relative_to(folder), p.stem.replace("-", " ")) for p in trends]
    method = how_measured(models, latency)
    if method:
        blocks += [Heading("How this was measured"), method]
    return Report(job_id, folder, blocks, rows, comparison, recs)


def _target(root: Path, job_id: str):
    """The job's quantization.target, from its saved plan (None: no plan here)."""
    from qbench.orchestrate import load_plan

    try:
        units = load_plan(root, job_id).units
    except Exception:  # a report of rows copied without their plan: the default targets
        return None
    return units[0].quantization.target if units else None


def _reference(root: Path, job_id: str) -> str:
    """The job's benchmark.reference, from its saved plan (fp32 without one)."""
    from qbench.orchestrate import load_plan

    try:
        units = load_plan(root, job_id).units
    except Exception:  # a report of rows copied without their plan: the default reference
        return "fp32"
    return units[0].benchmark.reference if units else "fp32"


def _mark_recommended(rows: list[dict], recs: list[dict]) -> None:
    """summary.csv: which row is the recommendation at its batch size."""
    chosen = {(r["model_id"], r["device"], r["batch_size"]): r.get("recommended_mode")
              for r in recs}
    for row in rows:
        if row.get("batch_size") is None:
            continue
        row["recommended"] = chosen.get((row["model_id"], row["device"], row["batch_size"])) == row["mode"]


def write_recommendations(root: Path, job_id: str, recs: list[dict]) -> Path | None:
    """The job's `recommendations` rows, one file per job (rewritten by every report)."""
    from qbench.manifest import ManifestError, job_date_of

    try:
        day = job_date_of(job_id).isoformat()
    except ManifestError:  # a job id without a date stamp: no partition to write into
        return None
    if not recs:
        unit_file(root, "recommendations", day, job_id, "job").unlink(missing_ok=True)
        return None
    return write_rows(root, "recommendations", day, job_id, "job", recs)


def _rows_with_units(rows: list[dict], models: list[dict]):
    """(summary row, its unit's models row) pairs."""
    by_key = {(m["job_id"], m["model_id"], m["mode"], m["device"]): m for m in models}
    for row in rows:
        m = by_key.get((row["job_id"], row["model_id"], row["mode"], row["device"]))
        if m is not None:
            yield row, m


def _csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_report(root: Path, job_id: str, compare_with: str | None = None,
                 thresholds: Thresholds = Thresholds()) -> Report:
    report = build_report(root, job_id, compare_with, thresholds)
    write_text_atomic(report.folder / "report.md", report.markdown)
    write_text_atomic(report.folder / "report.html",
                  to_html(report.blocks, f"qbench report: {job_id}", report.folder))
    write_text_atomic(report.folder / "summary.csv", _csv(report.rows))
    write_recommendations(root, job_id, report.recommendations)
    return report
