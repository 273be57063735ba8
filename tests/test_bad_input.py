"""Hostile and broken input through the real CLI: exit 2, one line naming the field or file,
nothing written, nothing queued."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, qbench, small_manifest, worker_env

BASE_MODEL = {"id": "a", "arch": "resnet18", "num_classes": 10, "input_size": [64, 64]}
FIXTURE = {"id": "det", "arch": "fixture", "input_size": [64, 64]}
GOOD_COCO = {"images": [{"id": 1, "file_name": "a.png"}],
             "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
             "categories": [{"id": 1, "name": "circle"}]}


def _manifest(tmp, models=None, dataset=None, **extra) -> dict:
    doc = {"name": "bad", "models": models or [BASE_MODEL],
           "quantization": {"modes": ["fp32"]},
           "benchmark": {"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1}}
    if dataset is not None:
        doc["dataset"] = dataset
    for key, value in extra.items():
        section, _, field = key.partition("__")
        if field:
            doc.setdefault(section, {})[field] = value
        else:
            doc[section] = value
    return doc


def _coco(tmp, doc) -> dict:
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "ann.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return {"format": "coco", "images": "images", "annotations": "ann.json"}


def _write(tmp, doc) -> str:
    path = tmp / "m.yaml"
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


def case_no_such_net(t):
    return _manifest(t, [{**BASE_MODEL, "arch": "no_such_net"}]), "models[0]: unknown arch 'no_such_net'"


def case_maskrcnn(t):
    return _manifest(t, [{**BASE_MODEL, "arch": "maskrcnn_resnet50_fpn"}]), "is not supported: Mask R-CNN"


def case_int8_static_on_onnx(t):
    (t / "m.onnx").write_bytes(b"not read at validate time")
    doc = _manifest(t, [{"id": "o", "source": "onnx", "path": "m.onnx"}],
                    quantization={"modes": ["int8_static"]})
    return doc, "models[0]: mode int8_static cannot run models of source onnx"


def case_checkpoint_dir(t):
    return _manifest(t, [{**BASE_MODEL, "checkpoint": "."}]), "models[0].checkpoint: "


def case_checkpoint_symlink_loop(t):
    os.symlink(t / "loop.pt", t / "loop.pt")
    return _manifest(t, [{**BASE_MODEL, "checkpoint": "loop.pt"}]), "symlink loop"


def case_markup_in_name(t):
    return (_manifest(t, [{**BASE_MODEL, "checkpoint": "[/x]qbench[yolo].pt"}]),
            "[/x]qbench[yolo].pt")


def case_annotations_not_json(t):
    return _manifest(t, [FIXTURE], _coco(t, "{not json")), "not valid JSON"


def case_annotations_not_coco(t):
    return _manifest(t, [FIXTURE], _coco(t, {"hello": 1})), "not a COCO instances file"


def case_category_out_of_range(t):
    doc = {**GOOD_COCO, "categories": [{"id": 1}, {"id": 9}],
           "annotations": [{"image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}]}
    return _manifest(t, [FIXTURE], _coco(t, doc)), "category ids [9] are out of range"


def case_category_undeclared(t):
    doc = {**GOOD_COCO, "annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}]}
    return _manifest(t, [FIXTURE], _coco(t, doc)), "category ids [3] that are not in categories"


def case_category_not_int(t):
    doc = {**GOOD_COCO, "annotations": [{"image_id": 1, "category_id": "abc", "bbox": [1, 1, 5, 5]}]}
    return _manifest(t, [FIXTURE], _coco(t, doc)), "annotations[0].category_id must be an integer"


def case_bad_bbox(t):
    doc = {**GOOD_COCO, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, -5]}]}
    return _manifest(t, [FIXTURE], _coco(t, doc)), "annotations[0].bbox must be"


def case_images_is_a_file(t):
    ds = _coco(t, GOOD_COCO)
    return _manifest(t, [FIXTURE], {**ds, "images": "ann.json"}), "dataset.images: "


def case_annotations_is_a_dir(t):
    ds = _coco(t, GOOD_COCO)
    return _manifest(t, [FIXTURE], {**ds, "annotations": "images"}), "dataset.annotations: "


def case_coco_on_classifier(t):
    return _manifest(t, [BASE_MODEL], _coco(t, GOOD_COCO)), "coco needs a detection model"


def case_huge_input(t):
    return (_manifest(t, [{**BASE_MODEL, "input_size": [100000, 100000]}]),
            "models[0].input_size: a side is at most")


def case_threads(t):
    return _manifest(t, benchmark__threads=100000), "benchmark.threads"


def case_iterations_bool(t):
    return _manifest(t, benchmark__iterations=True), "benchmark.iterations: Input should be a valid integer"


def case_iterations_string(t):
    return _manifest(t, benchmark__iterations="30"), "benchmark.iterations: Input should be a valid integer"


def case_batch_sizes_too_many(t):
    return _manifest(t, benchmark__batch_sizes=list(range(1, 40))), "benchmark.batch_sizes"


def case_batch_size_huge(t):
    return _manifest(t, benchmark__batch_sizes=[10**9]), "is above the limit"


def case_keep_float_long(t):
    return (_manifest(t, quantization={"modes": ["fp32"], "keep_float": ["x"] * 1000}),
            "quantization.keep_float")


def case_keep_float_bad_pattern(t):
    return (_manifest(t, quantization={"modes": ["fp32"], "keep_float": ["backbone.[z-a]"]}),
            "quantization.keep_float: pattern 'backbone.[z-a]' does not compile")


def case_duplicate_key(t):
    return ("name: bad\nmodels: [{id: a, arch: resnet18}]\nbenchmark: {iterations: 3}\n"
            "benchmark: {iterations: 4}\n", "duplicate key 'benchmark'")


def case_not_utf8(t):
    return b"name: caf\xe9\nmodels: []\n", "not UTF-8"


def case_too_big(t):
    return "name: big\n" + "# padding\n" * 200_000, "byte limit"


CASES = [f for n, f in sorted(globals().items()) if n.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__.removeprefix("case_"))
def test_validate_refuses_in_one_line(tmp_path, case):
    doc, needle = case(tmp_path)
    proc = qbench("validate", _write(tmp_path, doc))
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout + err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert needle in err, err
    assert "m.yaml" in err or needle in err


def test_yolo_without_ultralytics_is_refused_at_validate(tmp_path):
    """A real environment without the extra: site-packages linked entry by entry, less it."""
    import site
    import subprocess

    packages = tmp_path / "site"
    packages.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            if not entry.name.lower().startswith("ultralytics") and not (packages / entry.name).exists():
                (packages / entry.name).symlink_to(entry)
    # the package under its import name (-S processes no .pth: not the editable install's)
    (packages / "qbench").symlink_to(REPO / "worker")
    path = _write(tmp_path, _manifest(tmp_path, [{"id": "y", "source": "yolo", "arch": "yolov8n",
                                                  "input_size": [64, 64]}]))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{packages}"}
    proc = subprocess.run([sys.executable, "-S", "-c", "from qbench.cli import main; main()",
                           "validate", path], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "source yolo needs the optional ultralytics package" in proc.stderr
    assert "pip install 'qbench[yolo]'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", [case_no_such_net, case_int8_static_on_onnx, case_category_undeclared,
                                  case_iterations_bool],
                         ids=lambda f: f.__name__.removeprefix("case_"))
def test_submit_refuses_before_queueing(tmp_path, redis_server, case):
    import redis

    doc, needle = case(tmp_path)
    results = tmp_path / "results"
    proc = qbench("submit", _write(tmp_path, doc), "--results", str(results),
                  env=worker_env(redis_server.url, results))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not results.exists(), "nothing written"
    assert redis.Redis.from_url(redis_server.url).dbsize() == 0, "nothing queued"


def test_run_refuses_before_writing(tmp_path):
    doc, needle = case_maskrcnn(tmp_path)
    results = tmp_path / "results"
    proc = qbench("run", _write(tmp_path, doc), "--results", str(results))
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not results.exists()


def test_run_job_id_cannot_climb_out_of_results(tmp_path):
    results = tmp_path / "deep" / "results"
    manifest = small_manifest(tmp_path, quantization={"modes": ["fp32"]})
    proc = qbench("run", str(manifest), "--results", str(results),
                  "--job-id", "../../outside/evil-20260101T000000-abcdef")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "job id '../../outside/evil-20260101T000000-abcdef'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outside").exists() and not (tmp_path / "deep" / "outside").exists()
    assert not results.exists()


def test_status_cannot_read_outside_results(tmp_path):
    (tmp_path / "annotations.json").write_text(json.dumps({"job_id": "x", "units": []}))
    results = tmp_path / "a" / "results"
    (results / "jobs").mkdir(parents=True)
    proc = qbench("status", "../../annotations", "--results", str(results))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "job id '../../annotations'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_status_with_the_broker_down_is_one_line_fast(tmp_path):
    from tests.helpers import free_port

    manifest = small_manifest(tmp_path, quantization={"modes": ["fp32"]})
    results = tmp_path / "results"
    from qbench.orchestrate import plan_job, save_plan

    plan = plan_job(manifest)
    save_plan(plan, results)
    env = worker_env(f"redis://127.0.0.1:{free_port()}/0", results)
    proc = qbench("status", plan.job_id, "--results", str(results), env=env, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot reach the broker" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_broker_url_that_is_not_a_url(tmp_path):
    manifest = small_manifest(tmp_path, quantization={"modes": ["fp32"]})
    results = tmp_path / "results"
    env = {**worker_env("notaurl://", results)}
    proc = qbench("submit", str(manifest), "--results", str(results), env=env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "QBENCH_BROKER_URL='notaurl://'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not results.exists()


@pytest.mark.parametrize("args, needle", [
    (["--images", "0"], "--images"),
    (["--out", "{file}"], "is a file, not a folder"),
])
def test_data_synth_bad_arguments(tmp_path, args, needle):
    target = tmp_path / "existing.txt"
    target.write_text("keep me")
    args = [a.replace("{file}", str(target)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "synth")]
    proc = qbench("data", "synth", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert target.read_text() == "keep me"
    assert not (tmp_path / "synth").exists()


def test_run_into_a_results_path_that_is_a_file(tmp_path):
    manifest = small_manifest(tmp_path, quantization={"modes": ["fp32"]})
    results = tmp_path / "results"
    results.write_text("not a folder")
    proc = qbench("run", str(manifest), "--results", str(results))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(results) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert results.read_text() == "not a folder"


def test_export_that_fails_later_leaves_the_users_files_as_they_were(small_job, tmp_path):
    root, job_id = small_job
    target = tmp_path / "deploy"
    first = qbench("export", job_id, "--to", str(target), "--results", str(root))
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert {p.name for p in before} == {"fp32.pt", "fp32.json", "int8_dynamic.pt",
                                        "int8_dynamic.json"}
    # A later target (int8_dynamic comes after fp32) is blocked by a folder of the user's.
    (target / "r18" / "int8_dynamic.json").unlink()
    blocker = target / "r18" / "int8_dynamic.json"
    blocker.mkdir()
    (blocker / "notes.txt").write_text("mine")
    del before[blocker]
    proc = qbench("export", job_id, "--to", str(target), "--results", str(root))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err, err
    after = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == {**before, blocker / "notes.txt": b"mine"}, "everything exactly as it was"


def test_a_corrupt_unit_file_is_named_and_the_rest_reported(small_job, tmp_path):
    import shutil

    from qbench.results import read_table

    root = tmp_path / "results"
    shutil.copytree(small_job[0], root)
    job_id = small_job[1]
    files = sorted((root / "models").rglob("*.parquet"))
    assert len(files) == 2
    files[0].write_bytes(files[0].read_bytes()[:100] + b"garbage")
    for args in (["report", job_id], ["status", job_id], ["export", job_id, "--to",
                                                         str(tmp_path / "out")]):
        proc = qbench(*args, "--results", str(root), timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert f"skipped unreadable {files[0]}" in proc.stderr, proc.stderr
        if args[0] == "report":
            assert proc.returncode == 0, proc.stderr
    assert read_table(root, "models", job_id).num_rows == 1  # the sound unit is still read


def test_coco_file_names_cannot_leave_the_images_folder(tmp_path):
    from PIL import Image

    from qbench.evaluate.coco import DatasetError, load_batch, load_coco

    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), "red").save(secret)
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(images / "ok.png")
    for name in (str(secret), "../../secret.png"):
        doc = {**GOOD_COCO, "images": [{"id": 1, "file_name": "ok.png"},
                                       {"id": 2, "file_name": name}]}
        (tmp_path / "ann.json").write_text(json.dumps(doc))
        ds = load_coco(images, tmp_path / "ann.json", num_classes=5)
        assert load_batch(ds, [1], (8, 8))[0].shape == (1, 3, 8, 8)
        with pytest.raises(DatasetError, match="resolves outside the dataset's folders"):
            load_batch(ds, [2], (8, 8))


def test_imagefolder_symlink_out_is_refused(tmp_path):
    """Through the unit's own dataset loader: an entry that is a symlink to a file outside
    the folder and the data roots fails the unit, naming the entry; its pixels are never read."""
    from PIL import Image

    from qbench.orchestrate import plan_job
    from qbench.pipeline import run_unit

    secret = tmp_path / "elsewhere" / "secret.png"  # outside the job's folder and data roots
    secret.parent.mkdir()
    Image.new("RGB", (8, 8), "red").save(secret)
    job = tmp_path / "job"
    for cls in ("cat", "dog"):
        (job / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), "blue").save(job / "data" / cls / "a.png")
    (job / "data" / "cat" / "b.png").symlink_to(secret)
    manifest = small_manifest(
        job, name="symlink", quantization={"modes": ["int8_static"], "calibration": {"images": 1}},
        artifacts=False,
        models=[{"id": "m", "arch": "resnet18", "num_classes": 2, "input_size": [32, 32]}],
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        dataset={"format": "imagefolder", "images": "data"})
    outcome = run_unit(plan_job(manifest).units[0], tmp_path / "results")
    assert outcome.status == "error" and "b.png: resolves outside" in outcome.error


def test_a_pickled_checkpoint_says_what_to_do_instead(tmp_path):
    import pickle

    import torchvision

    from qbench.errors import ModelError
    from qbench.models.torchvision_models import load_checkpoint

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "pickled.pt"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(ModelError) as err:
        load_checkpoint(torchvision.models.resnet18(num_classes=2), path)
    message = str(err.value)
    assert "save a state_dict" in message and "weights_only=False" not in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "pwned").exists()
