"""Run a bench's manifest through the real pipeline, unit by unit, and read back its tables."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from qbench.orchestrate import plan_job
from qbench.pipeline import run_unit
from qbench.results import read_table


@dataclass
class JobTables:
    models: dict[str, dict]  # mode -> models row
    latency: list[dict]
    layers: list[dict]  # layers with an SQNR


def run_manifest(root: Path, name: str, manifest: dict, label: str) -> JobTables:
    """Write `manifest` as root/<name>.yaml, run every unit in-process (results under
    root/results), progress on stderr; a failed unit stops the bench."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    plan = plan_job(path)
    results = root / "results"
    for unit in plan.units:
        print(f"{label}: {unit.mode} ...", file=sys.stderr, flush=True)
        out = run_unit(unit, results, lambda step, done, total: print(
            f"  {step}", file=sys.stderr, flush=True) if "trial" in step or "NNCF model" in step else None)
        assert out.status == "ok", out.error
    rows = lambda table: read_table(results, table, plan.job_id).to_pylist()  # noqa: E731
    return JobTables(models={m["mode"]: m for m in rows("models")}, latency=rows("latency"),
                     layers=[r for r in rows("layers") if r["sqnr_db"] is not None])
