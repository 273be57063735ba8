"""Hostile input, second round, through the real CLI: no code runs from a file nobody named,
nothing is read or written outside its roots, no wait lasts forever, one line per error, and
the terminal shows what a manifest holds instead of obeying it.

Each case here failed before its fix (a traceback, a hang, a silent overwrite or a file read
from outside the roots)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, VENV_BIN, free_port, qbench, small_manifest, worker_env
from tests.test_bad_input import BASE_MODEL, FIXTURE, GOOD_COCO, _coco, _manifest, _write


def _one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == code, proc.stdout + err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# --- validate: one line for what used to be a traceback, a hang, or accepted -------------

def case_yaml_nested_deep(t):
    return "name: deep\nmodels: " + "[" * 400 + "]" * 400 + "\n", "nested deeper than"


def case_yaml_impossible_timestamp(t):
    return "name: ts\nmodels: [{id: a, arch: resnet18}]\nwhen: 2024-13-45\n", "when: Extra inputs"


def case_yaml_int_tag_on_text(t):
    return "name: x\nmodels: !!int abc\n", "'abc' is not an integer"


def case_yaml_huge_integer(t):
    return "name: x\nmodels: [{id: a, arch: resnet18, num_classes: " + "9" * 5000 + "}]\n", \
        "more than 30 digits"


def case_yaml_integer_key(t):
    return "name: x\nmodels: [{id: a, arch: resnet18}]\n1: a\n", "[1]: Keys should be strings"


def case_devices_twice(t):
    return _manifest(t, benchmark__devices=["cpu", "cpu"]), "benchmark.devices: a device is listed twice"


def case_devices_unbounded(t):
    return _manifest(t, benchmark__devices=["cpu"] * 20000), "benchmark.devices: List should have at most 2"


def case_units_unbounded(t):
    modes = ["fp32", "fp32_compiled", "bf16", "int8_dynamic", "int8_static", "int8_mixed",
             "ort_fp32", "ort_int8", "ort_int8_mixed"]
    models = [{**BASE_MODEL, "id": f"m{i}"} for i in range(64)]
    return _manifest(t, models, quantization={"modes": modes}), "576 units"


def case_preprocess_mean_nan(t):
    return (_manifest(t, [{**BASE_MODEL, "preprocess": {"mean": [0.5, float("nan"), 0.5]}}]),
            "models[0].preprocess.mean[1]: Input should be a finite number")


def case_preprocess_scale_inf(t):
    return (_manifest(t, [{**BASE_MODEL, "preprocess": {"scale": float("inf")}}]),
            "models[0].preprocess.scale: Input should be a finite number")


def case_preprocess_std_inf(t):
    return (_manifest(t, [{**BASE_MODEL, "preprocess": {"std": [1.0, float("inf"), 1.0]}}]),
            "models[0].preprocess.std[1]")


def case_pad_value_text(t):
    return (_manifest(t, [{**BASE_MODEL, "preprocess": {"pad_value": "114"}}]),
            "models[0].preprocess.pad_value: Input should be a valid integer")


def case_normalized_boxes_text(t):
    return (_manifest(t, [{**FIXTURE, "outputs": {"decoder": "torchvision",
                                                   "normalized_boxes": "yes"}}]),
            "models[0].outputs.normalized_boxes: Input should be a valid boolean")


def case_max_map_drop_inf(t):
    return (_manifest(t, [FIXTURE], _coco(t, GOOD_COCO),
                      quantization={"modes": ["int8_mixed"], "target": {"max_map_drop": float("inf")}}),
            "quantization.target.max_map_drop")


def case_coco_box_nan(t):
    doc = {**GOOD_COCO, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, "NaN"]}]}
    text = json.dumps(doc).replace('"NaN"', "NaN")
    return _manifest(t, [FIXTURE], _coco(t, text)), "annotations[0].bbox must be"


def case_coco_box_inf(t):
    doc = {**GOOD_COCO, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, "I", 5]}]}
    text = json.dumps(doc).replace('"I"', "Infinity")
    return _manifest(t, [FIXTURE], _coco(t, text)), "annotations[0].bbox must be"


def case_coco_duplicate_image_ids(t):
    doc = {**GOOD_COCO, "images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}]}
    return _manifest(t, [FIXTURE], _coco(t, doc)), "images[1].id 1 is used by an earlier image"


def case_coco_file_name_dot(t):
    doc = {**GOOD_COCO, "images": [{"id": 1, "file_name": "."}]}
    return _manifest(t, [FIXTURE], _coco(t, doc)), "images[0].file_name '.' does not name a file"


def case_coco_file_name_a_folder(t):
    doc = {**GOOD_COCO, "images": [{"id": 1, "file_name": "sub"}]}
    ds = _coco(t, doc)
    (t / "images" / "sub").mkdir()
    return _manifest(t, [FIXTURE], ds), "sub: not a regular file"


def case_coco_file_name_a_fifo(t):
    """Validate used to pass it, and `run` then blocked forever opening it."""
    doc = {**GOOD_COCO, "images": [{"id": 1, "file_name": "a.png"}]}
    ds = _coco(t, doc)
    os.mkfifo(t / "images" / "a.png")
    return _manifest(t, [FIXTURE], ds), "a.png: not a regular file"


def case_coco_huge_integer(t):
    text = json.dumps(GOOD_COCO).replace('"id": 1, "file_name"', '"id": ' + "1" * 5000 + ', "file_name"')
    return _manifest(t, [FIXTURE], _coco(t, text)), "not valid JSON"


def case_checkpoint_a_fifo(t):
    os.mkfifo(t / "ckpt.pt")
    return _manifest(t, [{**BASE_MODEL, "checkpoint": "ckpt.pt"}]), "ckpt.pt is not a regular file"


def case_yaml_alias_bomb(t):
    lines = ["name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("models: [{id: a, arch: resnet18}]")
    lines.append("quantization: {modes: [fp32], keep_float: *a8}")
    return "\n".join(lines) + "\n", "more than 100000 values once its aliases are expanded"


def case_yaml_recursive_alias(t):
    return "name: r\nmodels: &m [*m]\n", "more than 100000 values"


CASES = [f for n, f in sorted(globals().items()) if n.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__.removeprefix("case_"))
def test_validate_refuses_in_one_line(tmp_path, case, monkeypatch, capsys):
    """`qbench validate` through main() in this process (a process each would add a minute to
    the suite); the subprocess tests below hold the same for the installed entry point."""
    import qbench.results
    from qbench.cli import main

    monkeypatch.setattr(qbench.results, "UNREADABLE", {})  # what earlier tests read in-process
    doc, needle = case(tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["qbench", "validate", _write(tmp_path, doc)])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_manifest_that_is_a_fifo_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "m.yaml")
    err = _one_line(qbench("validate", str(tmp_path / "m.yaml"), timeout=60))
    assert "m.yaml: not a regular file" in err


# --- settings from the environment, and CLI arguments -------------------------------------

@pytest.mark.parametrize("env, command, needle", [
    ({"QBENCH_MAX_BATCH_SIZE": "abc"}, "validate", "QBENCH_MAX_BATCH_SIZE='abc': not an integer"),
    ({"QBENCH_MAX_INPUT_SIDE": "1e9"}, "validate", "QBENCH_MAX_INPUT_SIDE='1e9': not an integer"),
    ({"QBENCH_NIGHTLY_AT": "25:00"}, "submit", "QBENCH_NIGHTLY_AT='25:00': expected HH:MM"),
    ({"QBENCH_VISIBILITY_TIMEOUT": "soon"}, "submit", "QBENCH_VISIBILITY_TIMEOUT='soon'"),
    ({"QBENCH_STAGE_MAX_BYTES": "2GB"}, "submit", "QBENCH_STAGE_MAX_BYTES='2GB': not an integer"),
])
def test_environment_settings_are_checked_in_one_line(tmp_path, redis_server, env, command, needle):
    import redis

    manifest = small_manifest(tmp_path, quantization={"modes": ["fp32"]})
    results = tmp_path / "results"
    extra = ["--results", str(results)] if command == "submit" else []
    proc = qbench(command, str(manifest), *extra,
                  env={**worker_env(redis_server.url, results), **env}, timeout=120)
    assert needle in _one_line(proc)
    assert not (results / "jobs").exists() or not list((results / "jobs").iterdir())
    assert redis.Redis.from_url(redis_server.url).llen("cpu") == 0, "nothing queued"


@pytest.mark.parametrize("args, needle", [
    (["submit", "{manifest}", "--wait", "--timeout", "nan"], "--timeout nan: must be a finite"),
    (["submit", "{manifest}", "--wait", "--timeout", "inf"], "--timeout inf: must be a finite"),
    (["report", "--latency-threshold", "nan"], "--latency-threshold nan"),
    (["report", "--map-threshold", "-inf"], "--map-threshold -inf"),
    (["run", "{manifest}", "--job-id", "tiny-20261345T000000-abcdef"], "20261345 is not a date"),
    (["data", "synth", "--out", "{tmp}/s", "--seed", "-1"], "--seed"),
    (["data", "synth", "--out", ""], "--out '': give the folder to create"),
])
def test_cli_arguments_are_refused_in_one_line(tmp_path, args, needle):
    manifest = small_manifest(tmp_path, quantization={"modes": ["fp32"]})
    results = tmp_path / "results"
    args = [a.replace("{manifest}", str(manifest)).replace("{tmp}", str(tmp_path)) for a in args]
    dead_broker = worker_env(f"redis://127.0.0.1:{free_port()}/0", results)
    proc = subprocess.run([str(VENV_BIN / "qbench"), *args, "--results", str(results)]
                          if args[0] != "data" else [str(VENV_BIN / "qbench"), *args],
                          cwd=tmp_path, env=dead_broker, capture_output=True, text=True, timeout=120)
    assert needle in _one_line(proc)
    assert not results.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"], "nothing written"


def test_data_synth_at_its_minimum_size(tmp_path):
    proc = qbench("data", "synth", "--out", str(tmp_path / "s"), "--size", "32", "--images", "6",
                  "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "s" / "annotations.json").read_text())
    assert len(doc["images"]) == 6 and len(list((tmp_path / "s" / "images").iterdir())) == 6


# --- the terminal ----------------------------------------------------------------------------

def test_escape_sequences_in_a_manifest_are_shown_not_obeyed(tmp_path):
    evil = "x\x1b[2K\x1b[1A\rok\u202e.pt"
    proc = qbench("validate", _write(tmp_path, _manifest(tmp_path, [{**BASE_MODEL, "checkpoint": evil}])))
    err = _one_line(proc)
    for raw in ("\x1b", "\r", "\u202e"):
        assert raw not in proc.stderr
    assert "\\x1b[2K\\x1b[1A" in err and "\\u202e" in err, err
    assert "models[0].checkpoint" in err


def test_validate_listing_escapes_an_onnx_path(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    name = "m\x1b]0;owned\x07.onnx"
    # a real ONNX model: a file that is none is refused at validate (tests/test_file_checks.py)
    shape = [1, 3, 32, 32]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    onnx.save(helper.make_model(graph), str(tmp_path / name))
    doc = _manifest(tmp_path, [{"id": "o", "source": "onnx", "path": name}],
                    quantization={"modes": ["ort_fp32"]})
    proc = qbench("validate", _write(tmp_path, doc))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "m\\x1b]0;owned\\x07.onnx" in proc.stdout


# --- staging and running agree on what a dataset holds, checked before a byte is read ------

def _imagefolder_job(tmp: Path, **extra) -> Path:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp / "data" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "blue").save(tmp / "data" / cls / "a.png")
    return small_manifest(
        tmp, name="folder", quantization={"modes": ["fp32"]}, artifacts=False,
        models=[{"id": "m", "arch": "resnet18", "num_classes": 2, "input_size": [32, 32]}],
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0}, dataset={"format": "imagefolder", "images": "data"}, **extra)


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_symlink_out_of_a_dataset_is_refused_before_it_is_read(tmp_path, redis_server, command):
    """The link points at a FIFO outside every root: reading it would block forever, so a
    one-line refusal within the timeout shows that no byte was read."""
    import redis

    job = tmp_path / "job"
    manifest = _imagefolder_job(job)
    os.mkfifo(tmp_path / "outside.png")
    (job / "data" / "cat" / "b.png").symlink_to(tmp_path / "outside.png")
    results = tmp_path / "results"
    proc = qbench(command, str(manifest), "--results", str(results),
                  env=worker_env(redis_server.url, results), timeout=60)
    err = _one_line(proc)
    assert "b.png: a symlink to" in err and "outside the dataset folder" in err, err
    assert not (results / "inputs").exists() and not (results / "jobs").exists() or \
        not list((results / "jobs").iterdir())
    assert redis.Redis.from_url(redis_server.url).llen("cpu") == 0


def test_a_symlinked_folder_counts_toward_the_staging_limit(tmp_path, redis_server):
    """A folder linked from inside the data root is copied, so its bytes count: over the
    limit, a dataset outside a data root is refused instead of copied."""
    import redis

    job = tmp_path / "job"
    manifest = _imagefolder_job(job)
    big = job / "models" / "big"  # a data root of the job's folder (QBENCH_DATA_ROOTS)
    big.mkdir(parents=True)
    (big / "x.png").write_bytes(b"\0" * 200_000)
    (job / "data" / "dog" / "more").symlink_to(big)
    results = tmp_path / "results"
    env = {**worker_env(redis_server.url, results), "QBENCH_STAGE_MAX_BYTES": "100000",
           "QBENCH_DATA_ROOTS": str(job / "models")}
    proc = qbench("submit", str(manifest), "--results", str(results), env=env, timeout=60)
    assert "over QBENCH_STAGE_MAX_BYTES=100000" in _one_line(proc)
    assert redis.Redis.from_url(redis_server.url).llen("cpu") == 0
    # under the limit, the linked folder's bytes are copied and hashed like the rest
    env["QBENCH_STAGE_MAX_BYTES"] = "10000000"
    proc = qbench("submit", str(manifest), "--results", str(results), env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(next((results / "jobs").glob("*.json")).read_text())
    staged = results / plan["units"][0]["staged"]["data"]
    assert (staged / "dog" / "more" / "x.png").stat().st_size == 200_000
    assert not (staged / "dog" / "more").is_symlink()
    redis.Redis.from_url(redis_server.url).flushdb()


# --- no wait lasts forever; Ctrl-C ------------------------------------------------------------

def test_ctrl_c_mid_unit_is_one_line_and_leaves_no_unit_queued(tmp_path):
    from qbench.results import read_table

    manifest = small_manifest(tmp_path, quantization={"modes": ["fp32", "int8_dynamic"]},
                              inspect={"images": 0}, artifacts=False,
                              benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 100000,
                                         "threads": 1})
    results = tmp_path / "results"
    proc = subprocess.Popen([str(VENV_BIN / "qbench"), "run", str(manifest), "--results",
                             str(results)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((results / "jobs").glob("*.json")) if (results / "jobs").exists() else True:
        assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
        time.sleep(0.2)
    time.sleep(3)  # inside the first unit
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert lines and "interrupted" in lines[-1], err
    assert "Traceback" not in err, err
    job_id = next((results / "jobs").glob("*.json")).stem
    rows = read_table(results, "models", job_id).to_pylist()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"error"}, rows
    assert all("interrupted" in r["error"] for r in rows)


# --- export never replaces a user's file silently ---------------------------------------------

def test_export_never_silently_replaces_a_users_file(small_job, tmp_path):
    root, job_id = small_job
    target = tmp_path / "deploy"
    assert qbench("export", job_id, "--to", str(target), "--results", str(root)).returncode == 0
    again = qbench("export", job_id, "--to", str(target), "--results", str(root))
    assert again.returncode == 0 and "unchanged" in again.stderr, again.stderr
    mine = target / "r18" / "fp32.pt"
    mine.write_bytes(b"my own model")
    (target / "r18" / "int8_dynamic.json").write_text("my notes")
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    err = _one_line(qbench("export", job_id, "--to", str(target), "--results", str(root)))
    assert str(mine) in err and "--overwrite" in err and "nothing was written" in err, err
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    forced = qbench("export", job_id, "--to", str(target), "--results", str(root), "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert f"replaced {mine}" in forced.stderr
    assert mine.read_bytes() != b"my own model"


# --- same manifest, same second: two jobs ------------------------------------------------------

def test_two_identical_manifests_in_the_same_second_get_two_jobs(tmp_path):
    """Every id the manifest could get in the next seconds is taken already (as by a run
    started at the same moment): the run gets another id and the earlier plans stay."""
    from qbench.manifest import job_id_for, load_manifest

    manifest = small_manifest(tmp_path, quantization={"modes": ["fp32"]}, inspect={"images": 0},
                              artifacts=False,
                              benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1,
                                         "threads": 1})
    results = tmp_path / "results"
    (results / "jobs").mkdir(parents=True)
    spec = load_manifest(manifest)[0]
    now = dt.datetime.now()
    taken = {job_id_for(spec, now + dt.timedelta(seconds=s)) for s in range(0, 120)}
    for jid in taken:
        (results / "jobs" / f"{jid}.json").write_text("an earlier job")
    proc = qbench("run", str(manifest), "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    plans = {p.stem for p in (results / "jobs").glob("*.json")}
    new = plans - taken
    assert len(new) == 1, plans
    assert all((results / "jobs" / f"{j}.json").read_text() == "an earlier job" for j in taken)


# --- the report embeds only its own pictures ---------------------------------------------------

def test_report_html_does_not_embed_a_symlinked_file(small_job, tmp_path):
    import base64

    root, job_id = small_job
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret bytes of someone else " * 10)
    inspect = root / "reports" / job_id / "inspect"
    inspect.mkdir(parents=True, exist_ok=True)
    (inspect / "planted.png").symlink_to(secret)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inner.png").write_bytes(secret.read_bytes())
    (inspect / "linked-dir").symlink_to(tmp_path / "dir")
    try:
        proc = qbench("report", job_id, "--results", str(root))
        assert proc.returncode == 0, proc.stderr
        html = (root / "reports" / job_id / "report.html").read_text()
        assert base64.b64encode(secret.read_bytes()).decode()[:40] not in html
    finally:
        (inspect / "planted.png").unlink()
        (inspect / "linked-dir").unlink()


# --- item 1: a named YOLO arch is built from the installed package only ------------------------

def test_yolo_config_planted_in_the_working_folder_is_never_read(tmp_path):
    pytest.importorskip("ultralytics")
    planted = tmp_path / "yolov8n.yaml"
    marker = tmp_path / "pwned"
    config = yaml.safe_load((Path(__import__("ultralytics").__file__).parent / "cfg" / "models"
                             / "v8" / "yolov8.yaml").read_text())
    config["activation"] = f"__import__('pathlib').Path({str(marker)!r}).write_text('x') or nn.SiLU()"
    planted.write_text(yaml.safe_dump(config))
    (tmp_path / "yolov8.yaml").write_text(planted.read_text())
    doc = _manifest(tmp_path, [{"id": "y", "source": "yolo", "arch": "yolov8n", "input_size": [64, 64]}],
                    inspect={"images": 0}, artifacts=False)
    path = _write(tmp_path, doc)
    proc = subprocess.run([str(VENV_BIN / "qbench"), "run", path, "--results",
                           str(tmp_path / "results")], cwd=tmp_path, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists(), "a string from a planted config was evaluated"


def test_a_file_linked_into_the_results_is_named_not_read(small_job, tmp_path):
    """A symlink planted among the unit files (to a Parquet file outside the results) is not
    read as this job's rows: it is named and skipped, like a corrupt file."""
    import shutil

    from qbench.results import read_table

    root = tmp_path / "results"
    shutil.copytree(small_job[0], root)
    job_id = small_job[1]
    unit_file = next((root / "models").glob(f"date=*/job={job_id}/*.parquet"))
    outside = tmp_path / "outside.parquet"
    shutil.copyfile(unit_file, outside)
    planted = unit_file.with_name("0000000000000000.parquet")
    planted.symlink_to(outside)
    os.mkfifo(unit_file.with_name("1111111111111111.parquet"))
    proc = qbench("report", job_id, "--results", str(root), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: skipped unreadable {planted}: not a regular file" in proc.stderr
    assert read_table(root, "models", job_id).num_rows == 2
