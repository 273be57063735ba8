"""`qbench`: validate, run, submit, status, report, export (typer)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from qbench.manifest import ManifestError
from qbench.printable import printable

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Quantize vision models and benchmark them against the original.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate synthetic COCO data.")
app.add_typer(data_app, name="data")
# markup=False: paths, ids and messages are printed as they are, so `[id]`, `qbench[yolo]`
# or a file named `[/x]` neither vanish nor crash the printer.
console = Console(stderr=True, markup=False)
out = Console(markup=False)

ResultsOpt = Annotated[Path, typer.Option("--results", envvar="QBENCH_RESULTS_DIR",
                                          help="Root of the Parquet dataset.")]


class StepDisplay:
    """A progress bar on a terminal; one line per step otherwise (CI logs, pipes)."""

    def __init__(self, units: int | None = None):
        self.units = units  # None: no overall bar
        self.bar = (Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                             TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                             console=console) if console.is_terminal else None)
        self.started = time.monotonic()

    def __enter__(self) -> StepDisplay:
        if self.bar:
            self.bar.__enter__()
            self.overall = self.bar.add_task("units", total=self.units) if self.units else None
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def unit(self, label: str):
        if self.bar:
            task = self.bar.add_task(label, total=1)
            self.task = task
            return lambda step, done, total: self.bar.update(
                task, description=f"{label}: {printable(step)}", completed=done, total=total)
        # a step may name a layer of an ONNX file the user gave: printed escaped
        return lambda step, done, total: console.print(
            f"{time.monotonic() - self.started:7.1f}s {label}: {printable(step)} ({done}/{total})",
            highlight=False)

    def finish(self, label: str, status: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=f"{label}: {status}")
            if self.overall is not None:
                self.bar.advance(self.overall)
        else:
            console.print(f"{time.monotonic() - self.started:7.1f}s {label}: {status}",
                          highlight=False)


class CliError(Exception):
    """Printed as one line, exit status 2 (or the one given)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


@app.command()
def validate(manifest: Path) -> None:
    """Check a manifest (fields, files, modes per device) and list the units it expands to."""
    from qbench.decode.layout import manifest_warnings
    from qbench.manifest import load_manifest
    from qbench.orchestrate import plan_job

    plan = plan_job(manifest)
    for line in manifest_warnings(load_manifest(manifest)[0]):
        out.print(printable(line), highlight=False, soft_wrap=True)
    print(f"job {plan.name}:")
    for u in plan.units:
        print(f"  unit {u.unit_id}  {u.model.id}  {printable(u.model.arch or u.model.path)}  "
              f"{u.mode}  {u.device}  queue={u.queue}")
    out.print(f"{printable(manifest)}: valid, {len(plan.units)} unit(s)")


@app.command()
def run(manifest: Path, results: ResultsOpt = Path("results"),
        job_id: Annotated[str | None, typer.Option(help="Reuse a job id (rewrites its rows).")] = None,
        ) -> None:
    """Run every unit in this process (no broker), then print and write the report."""
    from qbench.confine import confine_unit
    from qbench.orchestrate import claim_plan, plan_job
    from qbench.service.staging import digest_plan

    plan = plan_job(manifest, job_id=job_id)
    for unit in plan.units:  # the same checks a worker makes, before anything is written
        confine_unit(unit, results)
    _check_writable(results)
    plan = digest_plan(plan)
    from qbench.isolate import run_unit_isolated  # torch: only once the job is sound
    from qbench.orchestrate import now_stamp
    from qbench.report import write_report
    from qbench.report.terminal import print_report

    plan.submitted_at = now_stamp()  # the job's units are queued now, in this process
    plan = claim_plan(plan, results, fresh=job_id is None)
    queued_at = plan.submitted
    console.print(f"job {plan.job_id}: {len(plan.units)} unit(s), results in "
                  f"{printable(results)}/")
    failures = []
    timing = _timing_after(plan)
    with StepDisplay(len(plan.units) + sum(map(len, timing.values()))) as display:
        for n, unit in enumerate(plan.units, 1):
            label = f"[{n}/{len(plan.units)}] {unit.model.id} {unit.mode} {unit.device}"
            try:
                outcome = run_unit_isolated(unit, results, display.unit(label), queued_at)
            except KeyboardInterrupt:
                _interrupted(plan, results, n)
            display.finish(label, outcome.status)
            if outcome.status != "ok":
                failures.append(outcome)
            for model_id, device, limit in timing.pop(unit.unit_id, []):
                _time_side_by_side(results, plan.job_id, model_id, device, limit, display)
    rep = write_report(results, plan.job_id)
    print_report(rep.blocks, rep.folder, rep.files)
    if (results / "artifacts" / plan.job_id).exists():
        out.print(f"artifacts: {results / 'artifacts' / plan.job_id}/ "
                  f"(qbench export {plan.job_id} --to DIR)")
    for f in failures:
        console.print(f"unit {f.unit_id} failed: {printable(f.error)}", style="red",
                      highlight=False)
    if failures:
        raise typer.Exit(1)


def _timing_after(plan) -> dict[str, list[tuple[str, str, float]]]:
    """unit id -> the side-by-side timing steps that start once it has run (the last unit of
    each model x device timed side by side), with their time limit."""
    from qbench.isolate import unit_limit
    from qbench.orchestrate import timing_groups

    after: dict[str, list[tuple[str, str, float]]] = {}
    for model_id, device, units in timing_groups(plan):
        limit = max(unit_limit(u) for u in units)
        after.setdefault(units[-1].unit_id, []).append((model_id, device, limit))
    return after


def _time_side_by_side(results: Path, job_id: str, model_id: str, device: str, limit: float,
                       display: StepDisplay) -> None:
    """A model's variants timed side by side (worker/time_model.py); a failure is a line, the
    units' own figures stand."""
    from qbench.isolate import time_model_isolated

    label = f"{model_id} {device} side by side"
    step = display.unit(label)
    summary = time_model_isolated(results, job_id, model_id, device, limit,
                                  lambda text: step(text, 0, 1))
    display.finish(label, summary["status"])
    for mode, why in summary.get("left_out", {}).items():
        console.print(f"{label}: {printable(mode)} left out: {printable(why)}",
                      highlight=False)
    if summary.get("error"):
        console.print(f"{label}: {printable(summary['error'])}", style="red", highlight=False)


def _interrupted(plan, results: Path, n: int) -> None:
    """Ctrl-C mid-unit: the unit under way and those after it get an error row saying so
    (a plan is never left `queued` forever), then one line and exit 130."""
    from qbench.pipeline import failed_row, write_outcome
    from qbench.results import read_table

    written = {r["unit_id"] for r in read_table(results, "models", plan.job_id).to_pylist()}
    for unit in plan.units[n - 1:]:
        if unit.unit_id not in written:
            write_outcome(unit, results, [], failed_row(unit, "interrupted (Ctrl-C) before "
                                                               "the unit finished"))
    raise CliError(f"job {plan.job_id}: interrupted at unit {n} of {len(plan.units)}; the "
                   f"units not finished are recorded as errors (qbench status {plan.job_id})",
                   130)


def _check_writable(results: Path) -> None:
    """Write and remove a file in the results folder and each folder a unit writes to, so a
    read-only one fails before the plan is written instead of after every unit ran."""
    import tempfile

    for folder in [results] + [results / t for t in ("jobs", "models", "latency", "layers",
                                                     "class_metrics", "recommendations", "reports",
                                                     "artifacts")]:
        if folder == results or folder.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".qbench-probe-"):
                    pass
            except OSError as exc:
                raise CliError(f"results folder {folder}: not writable "
                               f"({exc.strerror or exc})") from None


def _check_broker(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except ValueError as exc:
        raise CliError(f"QBENCH_BROKER_URL={url!r}: not a Redis URL ({exc})") from None
    except redis.RedisError as exc:
        raise CliError(f"cannot reach the broker at {url}: {exc}") from None


@app.command()
def submit(manifest: Path, results: ResultsOpt = Path("results"),
           wait: Annotated[bool, typer.Option("--wait", help="Show progress until the job ends.")] = False,
           nightly: Annotated[bool, typer.Option(
               help="Run as a night's job (the date in QBENCH_TIMEZONE): once per night.")] = False,
           date: Annotated[str | None, typer.Option(
               "--date", help="With --nightly: the night to run, YYYY-MM-DD.")] = None,
           force: Annotated[bool, typer.Option(
               "--force", help="With --nightly: run the night again even if it ran.")] = False,
           timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
           ) -> None:
    """Queue the job's units on Redis (QBENCH_BROKER_URL); a report runs when the last ends."""
    from qbench.orchestrate import plan_job

    _finite("--timeout", timeout, positive=True)
    if (date or force) and not nightly:
        raise CliError(f"{'--date' if date else '--force'} needs --nightly")
    if nightly:
        _submit_night(manifest, results, date, force, wait, timeout)
        return
    plan = plan_job(manifest)  # torch-free: a bad manifest is refused at once
    from qbench.service.broker import broker_url

    _check_broker(broker_url())
    from qbench.orchestrate import claim_plan, plan_file, save_plan
    from qbench.service.staging import stage_plan
    from qbench.service.submit import stamped, submit_plan

    plan = claim_plan(plan, results, fresh=True)
    saved = plan_file(results, plan.job_id)
    try:
        plan = stamped(stage_plan(plan, results))
        save_plan(plan, results)
    except BaseException:
        saved.unlink(missing_ok=True)  # the claim: no plan names a job that was never queued
        raise
    try:
        submit_plan(plan)
    except Exception as exc:  # the broker went away between the check and the send
        saved.unlink(missing_ok=True)  # no plan claims a job that was never queued
        raise CliError(f"cannot queue job {plan.job_id} on {broker_url()}: "
                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                       ) from None
    out.print(f"submitted job {plan.job_id}: {len(plan.units)} unit(s)")
    out.print(plan.job_id)
    if wait:
        _wait(plan.job_id, results, timeout)


def _submit_night(manifest: Path, results: Path, date: str | None, force: bool, wait: bool,
                  timeout: float) -> None:
    from qbench.service.nightly import parse_night, tonight

    night = parse_night(date) if date else tonight()
    from qbench.orchestrate import plan_job

    plan_job(manifest)  # a bad manifest is refused before the broker is asked
    from qbench.service.broker import broker_url

    _check_broker(broker_url())
    from qbench.service.nightly import submit_night

    outcome = submit_night(manifest, results, night, force=force)
    if outcome.submitted:
        out.print(f"submitted job {outcome.job_id}: {outcome.units} unit(s) (night {night})",
                  soft_wrap=True)
    else:
        out.print(f"night {night}: job {outcome.job_id} is already {outcome.state}; nothing "
                  "queued (--force runs it again)", soft_wrap=True)
    out.print(outcome.job_id)
    if wait:
        _wait(outcome.job_id, results, timeout)


def _wait(job_id: str, results: Path, timeout: float) -> None:
    from qbench.service.submit import job_states

    deadline = time.monotonic() + timeout
    states = job_states(results, job_id)
    with StepDisplay() as display:
        show = display.unit(f"job {job_id}")
        last = None
        while True:
            states = job_states(results, job_id)
            summary = f"{states.describe()}; report {states.report_state}"
            if summary != last:  # a line per change, not per poll, when not on a terminal
                show(summary, states.finished, len(states.units))
                last = summary
            if states.done:
                break
            if time.monotonic() > deadline:
                raise CliError(f"job {job_id}: not finished after {timeout:.0f}s ({states.describe()})")
            time.sleep(1.0)
    _show_status(states)
    if states.failed:
        raise typer.Exit(1)


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _show_status(states) -> None:
    """Plain columns, errors in full: people read it and scripts grep it."""
    rows = [("unit", "model", "mode", "device", "state", "elapsed", "phase", "error")]
    rows += [(u.unit_id, u.model_id, u.mode, u.device, u.state, _elapsed(u.elapsed),
              printable(" ".join((u.phase or "").split())[:40]), printable(u.error or ""))
             for u in states.units]
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    print(f"job {states.job_id}: {states.describe()}")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:7], widths, strict=True)) + "  " + r[7])
    for model_id, device, state in states.timings:
        print(f"side by side: {model_id} {device}: {state}")
    print(f"report: {states.report_state}", flush=True)


@app.command()
def status(job_id: str, results: ResultsOpt = Path("results"),
           wait: Annotated[bool, typer.Option("--wait", help="Show progress until the job ends.")] = False,
           timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
           ) -> None:
    """Show each unit of a job: queued, running (elapsed, phase), ok, error or timeout."""
    from qbench.orchestrate import load_plan

    load_plan(results, job_id)  # an unknown or ill-formed id fails here, before the broker
    from qbench.service.broker import broker_url

    if not (results / "reports" / job_id / "report.md").exists():
        _check_broker(broker_url())  # states of units without a row come from the broker
    if wait:
        _check_broker(broker_url())
        _wait(job_id, results, timeout)
        return
    from qbench.service.submit import job_states

    states = job_states(results, job_id)
    _show_status(states)


@app.command()
def cancel(job_id: str, results: ResultsOpt = Path("results")) -> None:
    """Cancel a submitted job: units not yet started are skipped; running ones finish."""
    from qbench.orchestrate import load_plan
    from qbench.service.submit import cancel_plan

    plan = load_plan(results, job_id)
    from qbench.service.broker import broker_url

    _check_broker(broker_url())
    pending = cancel_plan(plan, results)
    out.print(f"job {job_id}: cancelled; {len(pending)} unit(s) had not started")


@app.command()
def report(job_id: Annotated[str | None, typer.Argument(help="Job id; default: the latest.")] = None,
           results: ResultsOpt = Path("results"),
           compare: Annotated[tuple[str, str] | None, typer.Option(
               help="Compare two jobs: BASE NEW (the report is written for NEW).")] = None,
           check: Annotated[bool, typer.Option(
               "--check", help="Exit 1 when a regression is flagged.")] = False,
           latency_threshold: Annotated[float, typer.Option(
               help="Flag p50 slower by more than this many percent.")] = 10.0,
           map_threshold: Annotated[float, typer.Option(
               help="Flag mAP lower by more than this many points.")] = 0.5,
           ) -> None:
    """Write report.md, report.html, summary.csv and plots for a job and print the tables.

    A nightly job is compared with the previous night of the same manifest automatically.
    """
    from qbench.orchestrate import latest_job
    from qbench.report import Thresholds, write_report
    from qbench.report.terminal import print_report
    from qbench.results import job_ids

    _finite("--latency-threshold", latency_threshold)
    _finite("--map-threshold", map_threshold)
    base = None
    if compare:
        base, job_id = compare
    job_id = job_id or latest_job(results)
    if job_id is None:
        raise CliError(f"no job under {results}: run or submit one first")
    known = job_ids(results)
    for jid in filter(None, (job_id, base)):
        if jid not in known:
            raise CliError(f"job {jid!r}: no rows under {results}")
    rep = write_report(results, job_id, base, Thresholds(latency_threshold, map_threshold))
    print_report(rep.blocks, rep.folder, rep.files)
    if check and rep.regressions:
        console.print(f"{len(rep.regressions)} regression(s) against {rep.comparison.base}",
                      style="bold red", highlight=False)
        raise typer.Exit(1)


@app.command()
def export(job_id: Annotated[str, typer.Argument(help="Job id.")],
           to: Annotated[Path, typer.Option("--to", help="Folder to copy the artifacts into.")],
           model: Annotated[str | None, typer.Option("--model", help="Only this model id.")] = None,
           mode: Annotated[str | None, typer.Option("--mode", help="Only this mode.")] = None,
           overwrite: Annotated[bool, typer.Option(
               "--overwrite", help="Replace files already there that hold other bytes.")] = False,
           results: ResultsOpt = Path("results")) -> None:
    """Copy a job's saved models, checked against their sha256, with a JSON card beside each."""
    from qbench.artifacts.export import ExportError, export_artifacts

    try:
        done = export_artifacts(results, job_id, to, model=model, mode=mode, overwrite=overwrite)
    except ExportError as exc:
        raise CliError(str(exc)) from None
    for line in done.skipped:
        console.print(f"skipped {printable(line)}", highlight=False, soft_wrap=True)
    for path in done.replaced:
        console.print(f"replaced {printable(path)} (--overwrite)", highlight=False, soft_wrap=True)
    for path in done.kept:
        console.print(f"unchanged {printable(path)} (the same bytes were there already)",
                      highlight=False, soft_wrap=True)
    for path in done.files:
        print(f"{printable(path)}  (card: {printable(path.with_suffix('.json').name)})",
              flush=True)
    out.print(f"exported {len(done.files)} artifact(s) of job {job_id} to {printable(to)}")


@app.command()
def gc(results: ResultsOpt = Path("results"),
       dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go; remove nothing.")] = False,
       grace: Annotated[float | None, typer.Option(
           help="Keep inputs staged or reused less than this many seconds ago "
                "(default QBENCH_GC_GRACE or 3600).")] = None,
       ) -> None:
    """Remove staged inputs (results/inputs/) that no models row and no queued or running unit uses."""
    from qbench.service.broker import broker_url

    if grace is not None:
        _finite("--grace", grace)  # nan would make every input look old enough to go
    _check_broker(broker_url())  # the queues say which inputs queued units still need
    from qbench.service.gc import collect
    from qbench.service.lease import client

    try:
        done = collect(results, client(), dry_run=dry_run, grace=grace)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    verb = "would remove" if dry_run else "removed"
    for entry in done.removed:
        shown = ", ".join(entry.files[:3]) + (f", … ({len(entry.files)} files)"
                                               if len(entry.files) > 3 else "")
        print(f"{verb} {results / 'inputs' / entry.name}  {_bytes(entry.bytes)}  {shown}")
    for name in done.restored:
        print(f"kept {results / 'inputs' / name}: a submit used it while gc ran")
    out.print(f"{verb} {len(done.removed)} input(s), {done.freed} bytes ({_bytes(done.freed)}) "
              f"freed; kept "
              f"{done.kept_in_use} in use, {done.kept_recent} staged lately")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@data_app.command("synth")
def data_synth(out_text: Annotated[str, typer.Option("--out", help="Folder to create.")],
               seed: Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Random seed.")] = 0,
               images: Annotated[int, typer.Option(min=1, max=1_000_000,
                                                   help="Number of images.")] = 64,
               size: Annotated[int, typer.Option(min=32, max=4096,
                                                 help="Image side in pixels.")] = 256) -> None:
    """Generate a COCO-format synthetic detection dataset (shapes on textured backgrounds)."""
    if not out_text.strip():  # Path('') is the working folder: it would be written into unasked
        raise CliError(f"--out {out_text!r}: give the folder to create")
    out_dir = Path(out_text)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {printable(out_dir)}: is a file, not a folder")
    from qbench.evaluate.synth import generate_dataset

    created = not out_dir.exists()
    try:
        path = generate_dataset(out_dir, seed, images, (size, size))
    except BaseException:
        if created:  # nothing half-written left behind
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    out.print(f"wrote {images} images and {printable(path)}")


def _error(message: str) -> None:
    """One line on stderr, whatever the message holds (newlines folded, no markup, terminal
    escapes shown as text)."""
    console.print(Text.assemble(("error:", "bold red"), " ",
                                printable(" ".join(str(message).split()))),
                  highlight=False, soft_wrap=True)


def _finite(option: str, value: float, positive: bool = False) -> None:
    """nan would make every comparison false (a check that never flags, a wait that never
    ends); inf the same in the other direction."""
    import math

    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise CliError(f"{option} {value}: must be a finite number"
                       + (" above 0" if positive else " of at least 0"))


def _os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {exc.strerror or exc}" if where else str(exc.strerror or exc)


def main() -> None:
    results = sys.modules.get("qbench.results")
    if results:  # main() called again in one process names only this command's skipped files
        results.UNREADABLE.clear()
    try:
        code = app(standalone_mode=False)
    except BaseException:
        _name_unreadable()
        _exit_for_exception()
    _name_unreadable()
    sys.exit(code if isinstance(code, int) else 0)


def _exit_for_exception() -> None:
    """Map the exception being handled to one line and an exit status."""
    import click

    from qbench.errors import ConfigError, ModelError
    from qbench.evaluate.coco_doc import DatasetError

    try:
        raise
    except (ManifestError, ModelError, CliError, DatasetError, ConfigError) as exc:
        _error(str(exc))
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(130)
    except OSError as exc:  # unwritable results folder, a file where a folder should be, ...
        _error(_os_error(exc))
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        sys.exit(130)
    # Usage errors (typer ships its own copy of click's): one line and where to find help.
    except (click.ClickException, typer.exceptions.TyperException) as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _error(message + hint)
        sys.exit(getattr(exc, "exit_code", 2))


def _name_unreadable() -> None:
    """Unit files the reader skipped (corrupt Parquet): named, the rest was reported."""
    results = sys.modules.get("qbench.results")  # not imported: nothing was read
    for path, reason in (results.UNREADABLE.items() if results else ()):
        console.print(f"warning: skipped unreadable {printable(path)}: {printable(reason)}", style="yellow",
                      highlight=False, soft_wrap=True)
