"""Artifacts: the benchmarked model saved, loaded back bit for bit elsewhere, exported checked.

The loading checks run in fresh processes that cannot import qbench (and, for ONNX, not even
torch), on the same input the benchmarked model saw.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qbench.artifacts.save import SavedArtifact, discard_artifact, save_artifact
from qbench.artifacts.store import sha256_file
from qbench.backends.torch.torchscript import max_difference
from qbench.evaluate.synth import synth_images
from qbench.manifest import Manifest, expand
from qbench.measure import environment_fingerprint
from qbench.measure.machine import LoadSampler
from qbench.measure.unit_latency import latency_row_of, measure_unpaired
from qbench.model_row import ParamsResult, SizeResult
from qbench.models import load_model
from qbench.orchestrate import plan_job
from qbench.pipeline import UnitInputs, calibration_source, initial_model_row, run_unit
from qbench.quantize.common import serialized_size_bytes
from qbench.quantize.registry import QuantizeRequest, quantize
from qbench.results import read_table, write_rows
from tests.helpers import qbench, small_manifest

JOB = "art-20260101T000000-abcdef"
MODES = ["fp32", "int8_static", "ort_fp32", "ort_int8"]
MODELS = [{"id": "det", "arch": "fixture", "input_size": [256, 256]},
          {"id": "r18", "arch": "resnet18", "num_classes": 10, "input_size": [64, 64]}]


@dataclass
class Saved:
    model_id: str
    mode: str
    task: str
    saved: SavedArtifact
    batch: torch.Tensor  # the input both the benchmarked model and the artifact get
    expected: Any  # what the benchmarked model returned for it


def _units(**extra) -> list:
    doc = {"name": "art", "models": MODELS,
           "quantization": {"modes": MODES, "calibration": {"images": 4, "method": "minmax"}},
           "benchmark": {"batch_sizes": [1], "warmup": 0, "iterations": 1}, **extra}
    return expand(Manifest.model_validate(doc), JOB, Path("."))


def _run(unit, root: Path) -> Saved:
    """A unit as the pipeline runs it: quantize, measure, save; rows written like run_unit's."""
    loaded = load_model(unit)
    row = initial_model_row(unit, environment_fingerprint())
    with tempfile.TemporaryDirectory() as work_dir:  # deleted before the artifact is read
        q = quantize(loaded, unit.mode, QuantizeRequest(
            device="cpu", calibration=unit.quantization.calibration, keep_float=[],
            calibration_batches=calibration_source(unit, loaded, UnitInputs.of(unit, loaded)),
            work_dir=work_dir))
        batch = synth_images(2, loaded.input_size, 3)
        result = measure_unpaired(q.predict, batch, 1, unit.device, unit.benchmark, LoadSampler())
        expected = q.predict(batch)
        saved = save_artifact(unit, loaded, q, root)
    row.update(task=loaded.task, trained_weights=loaded.trained, backend=q.backend,
               **SizeResult.of(q, serialized_size_bytes(loaded.module)).columns(),
               **ParamsResult.of(q).columns(), notes=q.notes, status="ok", error=None)
    saved.apply(row)
    base = {k: row[k] for k in ("job_id", "job_name", "unit_id", "model_id", "arch", "mode",
                                "backend", "device")}
    write_rows(root, "latency", unit.job_date, JOB, unit.unit_id,
               [latency_row_of(base, unit.benchmark, loaded.input_size, 1, result, LoadSampler(),
                               unit.benchmark.reference)])
    write_rows(root, "models", unit.job_date, JOB, unit.unit_id, [row])
    return Saved(unit.model.id, unit.mode, loaded.task, saved, batch, expected)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, dict[tuple[str, str], Saved]]:
    root = tmp_path_factory.mktemp("results")
    runs = {(u.model.id, u.mode): _run(u, root) for u in _units()}
    return root, runs


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`qbench ARGS` in this process (main() and its exit codes); returns (status, stderr)."""
    from qbench.cli import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["qbench", *args])
    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code, capsys.readouterr().err.strip()


def _fresh(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=120, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr[-3000:]


# Only torch and torchvision (for nms/roi_align); qbench cannot be imported, and Python's
# pickle is disabled while the archive loads: TorchScript's loader must need neither.
TORCH_CHILD = """
import json, pickle, sys
sys.modules["worker"] = None
import torch, torchvision
torch.set_num_threads(int(sys.argv[2]))  # as the benchmarked model ran: same summation order
for item in json.loads(sys.argv[1]):
    batch = torch.load(item["input"], weights_only=True)
    saved = pickle.load, pickle.loads, pickle.Unpickler
    pickle.load = pickle.loads = pickle.Unpickler = None
    model = torch.jit.load(item["path"])
    pickle.load, pickle.loads, pickle.Unpickler = saved
    with torch.inference_mode():
        for _ in range(3):  # TorchScript optimises after its first runs: check the later ones
            out = model(list(batch.unbind(0)))[1] if item["task"] == "detection" else model(batch)
    torch.save(out, item["output"])
"""

ORT_CHILD = """
import json, sys
sys.modules["worker"] = None
sys.modules["torch"] = None
import numpy as np, onnxruntime as ort
for item in json.loads(sys.argv[1]):
    session = ort.InferenceSession(item["path"], providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["WeightBiasQuantization"])  # as the card says
    name, names = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]
    batch = np.load(item["input"])
    feeds = [{name: image} for image in batch] if item["task"] == "detection" else [{name: batch}]
    outs = [dict(zip(names, session.run(None, feed))) for feed in feeds]
    np.savez(item["output"], **{f"{i}:{k}": v for i, out in enumerate(outs) for k, v in out.items()})
"""


def test_torch_artifacts_load_without_qbench_and_match(job, tmp_path):
    root, runs = job
    chosen = [s for (_, mode), s in runs.items() if mode in ("fp32", "int8_static")]
    items = []
    for s in chosen:
        assert s.saved.format == "torchscript", s.saved
        path = root / s.saved.path
        torch.save(s.batch, tmp_path / f"{s.model_id}-{s.mode}.in")
        items.append({"path": str(path), "task": s.task, "input": str(tmp_path / f"{s.model_id}-{s.mode}.in"),
                      "output": str(tmp_path / f"{s.model_id}-{s.mode}.out")})
    _fresh(TORCH_CHILD, json.dumps(items), str(torch.get_num_threads()))
    for s, item in zip(chosen, items, strict=True):
        got = torch.load(item["output"], weights_only=True)
        diff = max_difference(s.expected, got)
        if s.mode == "int8_static":
            assert diff == 0.0, (s.model_id, diff)  # identical int8 outputs
        else:
            assert diff <= 1e-6, (s.model_id, diff)
    det = runs[("det", "int8_static")].expected
    assert all(len(d["boxes"]) for d in det), "the detector finds objects: a real comparison"


def test_onnx_artifacts_load_with_only_onnxruntime_bitwise(job, tmp_path):
    root, runs = job
    chosen = [s for (_, mode), s in runs.items() if mode.startswith("ort_")]
    items = []
    for s in chosen:
        assert s.saved.format == "onnx" and s.saved.path.endswith(f"/{s.mode}.onnx"), s.saved
        stem = tmp_path / f"{s.model_id}-{s.mode}"
        np.save(f"{stem}.npy", s.batch.numpy())
        items.append({"path": str(root / s.saved.path), "task": s.task, "input": f"{stem}.npy",
                      "output": f"{stem}.npz"})
    _fresh(ORT_CHILD, json.dumps(items))
    for s, item in zip(chosen, items, strict=True):
        got = np.load(item["output"])
        if s.task == "detection":
            for i, image in enumerate(s.expected):
                for key, value in image.items():
                    assert np.array_equal(value.numpy(), got[f"{i}:{key}"]), (s.mode, i, key)
        else:
            (key,) = [k for k in got.files if k.startswith("0:")]
            assert np.array_equal(s.expected.numpy(), got[key]), s.mode


def test_rows_name_the_artifact_and_its_hash(job):
    root, runs = job
    rows = read_table(root, "models", JOB).to_pylist()
    assert len(rows) == len(runs)
    for row in rows:
        ext = "onnx" if row["mode"].startswith("ort_") else "pt"
        assert row["artifact_path"] == f"artifacts/{JOB}/{row['model_id']}/{row['mode']}.{ext}"
        assert row["artifact_format"] == ("onnx" if ext == "onnx" else "torchscript")
        assert sha256_file(root / row["artifact_path"]) == row["artifact_sha256"]
        assert row["error"] is None and "artifact:" in row["notes"]
    files = sorted(p.name for p in (root / "artifacts" / JOB / "r18").iterdir())
    assert files == ["fp32.pt", "int8_static.pt", "ort_fp32.onnx", "ort_int8.onnx"]


def test_retry_overwrites_and_failed_retry_removes(tmp_path):
    unit = next(u for u in _units() if u.model.id == "r18" and u.mode == "fp32")
    first = _run(unit, tmp_path).saved
    second = _run(unit, tmp_path).saved
    folder = tmp_path / "artifacts" / JOB / "r18"
    assert [p.name for p in folder.iterdir()] == ["fp32.pt"], "one file, no temporaries"
    assert first.path == second.path and sha256_file(tmp_path / second.path) == second.sha256
    discard_artifact(unit, tmp_path)  # what run_unit does when a retry fails
    assert list(folder.iterdir()) == []


def test_artifacts_false_saves_nothing_and_the_row_says_so(tmp_path, monkeypatch, capsys):
    unit = next(u for u in _units(artifacts=False) if u.model.id == "r18" and u.mode == "fp32")
    s = _run(unit, tmp_path)
    assert not (tmp_path / "artifacts").exists()
    (row,) = read_table(tmp_path, "models", JOB).to_pylist()
    assert row["artifact_path"] is row["artifact_sha256"] is row["artifact_format"] is None
    assert row["status"] == "ok" and row["error"] is None
    assert "artifact not saved: manifest artifacts: false" in row["notes"]
    assert s.saved == SavedArtifact(note="artifact not saved: manifest artifacts: false")
    code, err = _cli(monkeypatch, capsys, "export", JOB, "--to", str(tmp_path / "out"),
                     "--results", str(tmp_path))
    assert code == 2 and "nothing to export" in err and "manifest artifacts: false" in err, err
    assert not (tmp_path / "out").exists()


def test_pipeline_saves_artifacts_unless_turned_off(tmp_path):
    results = tmp_path / "results"
    bench = {"devices": ["cpu"], "batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1}
    on = plan_job(small_manifest(tmp_path, "on", benchmark=bench,
                                 quantization={"modes": ["int8_static"],
                                               "calibration": {"images": 2, "method": "minmax"}}))
    off = plan_job(small_manifest(tmp_path, "off", benchmark=bench, artifacts=False,
                                  quantization={"modes": ["fp32"]}))
    for unit in (*on.units, *off.units):
        assert run_unit(unit, results).status == "ok"
    (row,) = read_table(results, "models", on.job_id).to_pylist()
    assert row["artifact_format"] == "torchscript"
    assert sha256_file(results / row["artifact_path"]) == row["artifact_sha256"]
    (row,) = read_table(results, "models", off.job_id).to_pylist()
    assert row["artifact_path"] is None and "artifacts: false" in row["notes"]
    assert not (results / "artifacts" / off.job_id).exists()


def test_export_copies_artifacts_with_cards(job, tmp_path):
    root, runs = job
    target = tmp_path / "deploy"
    proc = qbench("export", JOB, "--to", str(target), "--results", str(root))
    assert proc.returncode == 0, proc.stderr
    for (model_id, mode), s in runs.items():
        name = Path(s.saved.path).name
        copied = target / model_id / name
        assert sha256_file(copied) == s.saved.sha256
        card = json.loads((target / model_id / f"{mode}.json").read_text())
        assert card["artifact"]["file"] == name and card["artifact"]["sha256"] == s.saved.sha256
        assert card["model"]["model_id"] == model_id and card["quantization"]["mode"] == mode
        assert card["versions"]["torch"] == torch.__version__ and card["versions"]["qbench"]
        assert card["versions"]["onnxruntime"]
        assert card["figures"]["size_bytes"] > 0 and card["latency"][0]["latency_ms_p50"] > 0
        calib = card["quantization"]["calibration"]
        if mode in ("int8_static", "ort_int8"):
            assert calib == {"method": "minmax", "images": 4, "per_channel": True,
                             "bias_correction": False, "bias_correction_method": None}
        else:
            assert calib is None
    assert not [p for p in target.rglob(".*")], "no staging folder left behind"


def test_export_one_model_and_mode(job, tmp_path, monkeypatch, capsys):
    one = tmp_path / "one"
    code, err = _cli(monkeypatch, capsys, "export", JOB, "--model", "det", "--mode", "int8_static",
                     "--to", str(one), "--results", str(job[0]))
    assert code == 0, err
    assert sorted(p.name for p in one.rglob("*")) == ["det", "int8_static.json", "int8_static.pt"]


@pytest.mark.parametrize("damage", ["truncate", "change"])
def test_export_refuses_a_changed_artifact(job, tmp_path, damage, monkeypatch, capsys):
    root = tmp_path / "results"
    shutil.copytree(job[0], root)
    # r18 comes after det: det's files are staged before the bad one is found.
    bad = root / "artifacts" / JOB / "r18" / "int8_static.pt"
    data = bytearray(bad.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    target = tmp_path / "deploy"
    if damage == "truncate":  # once as a user runs it
        proc = qbench("export", JOB, "--to", str(target), "--results", str(root))
        code, err = proc.returncode, proc.stderr.strip()
    else:
        code, err = _cli(monkeypatch, capsys, "export", JOB, "--to", str(target),
                         "--results", str(root))
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "sha256 mismatch" in err and str(bad) in err
    assert not target.exists(), "nothing half-copied"

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    code, err = _cli(monkeypatch, capsys, "export", JOB, "--to", str(existing),
                     "--results", str(root))
    assert code == 2 and "sha256 mismatch" in err
    assert [p.name for p in existing.rglob("*")] == ["keep.txt"]


@pytest.mark.parametrize("args, needles", [
    (["nope-20260101T000000-abcdef"], ["job 'nope-20260101T000000-abcdef'", JOB]),
    ([JOB, "--model", "vgg"], ["model 'vgg' is not in job", "det, r18"]),
    ([JOB, "--mode", "fp8"], ["mode 'fp8' is not in job", "fp32, int8_static, ort_fp32, ort_int8"]),
    ([JOB, "--model", "r18", "--mode", "bf16"], ["mode 'bf16' is not in job", "for model r18"]),
])
def test_export_bad_names_are_one_line_listing_what_exists(job, tmp_path, args, needles,
                                                          monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, "export", *args, "--to", str(tmp_path / "out"),
                     "--results", str(job[0]))
    assert code == 2
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "out").exists()


def test_export_to_an_unwritable_target(job, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _cli(monkeypatch, capsys, "export", JOB, "--to", str(blocker / "out"),
                     "--results", str(job[0]))
    assert code == 2
    assert len(err.splitlines()) == 1 and "cannot write to" in err and str(blocker) in err, err
    assert blocker.read_text() == "not a folder"


def test_a_second_command_in_one_process_names_only_its_own_skipped_files(job, tmp_path,
                                                                          monkeypatch, capsys):
    """The skipped-file list belongs to one command: a corrupt file another call read is not
    named again by the next main() in the same process."""
    from qbench import results

    results.UNREADABLE[str(tmp_path / "elsewhere.parquet")] = "read by an earlier command"
    code, err = _cli(monkeypatch, capsys, "export", JOB, "--model", "vgg",
                     "--to", str(tmp_path / "out"), "--results", str(job[0]))
    assert code == 2 and "elsewhere.parquet" not in err and len(err.splitlines()) == 1, err
