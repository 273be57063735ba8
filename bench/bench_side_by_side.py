"""Side-by-side timing, before and after: a job's wall time and the widths of its speedup CIs.

    .venv/bin/python bench/bench_side_by_side.py MANIFEST [--code CHECKOUT ...] [--repeat N]

Runs `qbench run MANIFEST` with each checkout's code (this virtualenv, the checkout's worker/
linked as qbench ahead of it), the checkouts alternating run by run so that both see the same
machine load, and prints for each run: its wall time, the 1-minute load average before and
after, each variant's speedup over the reference with its 95% interval, and every two
variants' speedup (their measured pair where the job was timed side by side; otherwise two
paired runs combined, as the report does), with the interval's width as high / low.
A checkout from before side-by-side timing is compared with one after, e.g.

    git archive <commit> | tar -x -C /tmp/before   # then: --code /tmp/before --code .

    .venv/bin/python bench/bench_side_by_side.py MANIFEST --describe RESULTS_DIR

only prints the figures of jobs already run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
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


def run(code: Path, manifest: Path, results: Path) -> float:
    """Wall seconds of `qbench run` with the checkout's code."""
    link = Path(tempfile.mkdtemp(prefix="qbench-code-"))
    (link / "qbench").symlink_to(code / "worker")
    env = {**os.environ, "PYTHONPATH": str(link)}
    # a relative manifest is the checkout's own copy: its data paths resolve inside it
    own = code / manifest
    target = own if not manifest.is_absolute() and own.is_file() else manifest.resolve()
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "from qbench.cli import main; main()", "run",
                           str(target), "--results", str(results)],
                          cwd=code, env=env, capture_output=True, text=True)
    took = time.monotonic() - began
    (results / "run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{code}: qbench run failed, see {results / 'run.log'}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--code", type=Path, action="append", help="checkouts to compare")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/qbench-side-by-side"))
    parser.add_argument("--describe", type=Path, nargs="*", help="only print these results")
    args = parser.parse_args()
    if args.describe:
        for folder in args.describe:
            describe(folder)
        return
    codes = [c.resolve() for c in (args.code or [Path(__file__).resolve().parents[1]])]
    for n in range(args.repeat):
        for k, code in enumerate(codes):
            results = args.out / f"{k}-{code.name}-{n}"
            results.mkdir(parents=True, exist_ok=True)
            before = os.getloadavg()[0]
            took = run(code, args.manifest, results)
            print(f"{code} run {n}: wall {took:.1f} s, load {before:.2f} -> "
                  f"{os.getloadavg()[0]:.2f}")
            describe(results)


if __name__ == "__main__":
    main()
