"""Wall time and CI widths of a job's speedups, for docs/benchmarks.md (side-by-side timing).

    python bench/side_by_side_widths.py RESULTS_DIR [RESULTS_DIR ...]

For each job under each results folder: the units' and timing steps' summed run time, each
variant's speedup over the reference with its 95% interval, and every two variants' speedup
(measured pair where the job was timed side by side; otherwise two paired runs combined, as
the report does), with the interval's width as high / low.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path

from qbench.report.speedup import attach_pairs, speedup_over
from qbench.results import job_ids, read_table


def describe(root: Path) -> None:
    for job in job_ids(root):
        latency = read_table(root, "latency", job).to_pylist()
        models = read_table(root, "models", job).to_pylist()
        attach_pairs(latency, read_table(root, "pairs", job).to_pylist())
        unit_s = sum(m.get("run_seconds") or 0 for m in models)
        print(f"{root} {job}: {len(models)} units, {unit_s:.1f} s of unit time, "
              f"cpu {models[0]['cpu_model']} isa {models[0]['cpu_isa']}")
        over_ref, between = [], []
        by_batch: dict[int, list[dict]] = {}
        for r in latency:
            if r["status"] == "ok":
                by_batch.setdefault(r["batch_size"], []).append(r)
        for bs, rows in sorted(by_batch.items()):
            for r in rows:
                if r.get("speedup"):
                    w = r["speedup_ci_high"] / r["speedup_ci_low"]
                    over_ref.append(w)
                    print(f"  bs {bs:3d} {r['mode']:>13} over {r['reference_mode']}: "
                          f"{r['speedup']:.2f}x [{r['speedup_ci_low']:.2f}-{r['speedup_ci_high']:.2f}]"
                          f" width {w:.3f} ({r['pairing']})")
            variants = [r for r in rows if r.get("pairing") != "reference"]
            for a, b in itertools.combinations(sorted(variants, key=lambda r: r["mode"]), 2):
                s = speedup_over(a, b)
                if s and s.low and s.high:
                    between.append(s.high / s.low)
                    basis = "measured pair" if s.measured_pair else "two paired runs"
                    print(f"  bs {bs:3d} {a['mode']:>13} over {b['mode']:<13}: {s.value:.2f}x "
                          f"[{s.low:.2f}-{s.high:.2f}] width {s.high / s.low:.3f} ({basis})")
        for name, ws in (("over the reference", over_ref), ("variant over variant", between)):
            if ws:
                print(f"  median CI width {name}: {statistics.median(ws):.3f} (n={len(ws)})")


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        describe(Path(folder))
