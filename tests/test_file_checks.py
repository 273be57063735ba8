"""Model files are checked for what they claim to be before anything is queued or staged."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from qbench.file_checks import is_torch_archive, onnx_problem
from tests.helpers import REPO, RedisServer, qbench, small_manifest, worker_env


def _onnx_model(path, with_input: bool = True):
    node = helper.make_node("Relu", ["x"], ["y"])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])]
    graph = helper.make_graph([node], "g", inputs if with_input else [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_torch_archives_are_recognised_and_other_files_are_not(tmp_path):
    state = torch.nn.Linear(2, 2).state_dict()
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    (tmp_path / "empty.pt").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("docs/readme.txt", "hello")
    for name in ("zip.pt", "legacy.pt", "scripted.pt"):
        assert is_torch_archive(tmp_path / name), name
    for name in ("random.pt", "empty.pt", "other.zip"):
        assert not is_torch_archive(tmp_path / name), name


def test_onnx_files_must_parse_with_a_graph_inputs_and_outputs(tmp_path):
    assert onnx_problem(_onnx_model(tmp_path / "ok.onnx")) is None
    (tmp_path / "random.onnx").write_bytes(os.urandom(4096))
    assert onnx_problem(tmp_path / "random.onnx").startswith("not an ONNX model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert onnx_problem(tmp_path / "empty.onnx") == "not an ONNX model (no graph)"
    assert "without graph inputs" in onnx_problem(_onnx_model(tmp_path / "noin.onnx", False))


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_validate_and_submit_refuse_a_file_that_is_not_what_it_claims(tmp_path, kind):
    import redis

    if kind == "checkpoint":
        (tmp_path / "weights.pt").write_bytes(os.urandom(2048))
        model = {"id": "r18", "arch": "resnet18", "num_classes": 10, "input_size": [64, 64],
                 "checkpoint": "weights.pt"}
        needle = "models[0].checkpoint: "
        name = "weights.pt"
    else:
        (tmp_path / "model.onnx").write_bytes(b"name: not a model\n" * 40)
        model = {"id": "o", "source": "onnx", "path": "model.onnx", "input_size": [64, 64]}
        needle = "models[0].path: "
        name = "model.onnx"
    manifest = small_manifest(tmp_path, name="claims", models=[model],
                              quantization={"modes": ["fp32" if kind == "checkpoint" else "ort_fp32"]})
    proc = qbench("validate", str(manifest))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, proc.stdout + err
    assert needle in err and name in err and "Traceback" not in err, err

    server = RedisServer(tmp_path / "redis").start()
    try:
        results = tmp_path / "results"
        proc = qbench("submit", str(manifest), "--results", str(results),
                      env=worker_env(server.url, results))
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert not results.exists(), "nothing staged"
        assert redis.Redis.from_url(server.url).dbsize() == 0, "nothing queued"
    finally:
        server.stop()


def test_validate_checks_files_without_importing_torch(tmp_path):
    _onnx_model(tmp_path / "ok.onnx")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    manifest = small_manifest(tmp_path, name="notorch", models=[
        {"id": "o", "source": "onnx", "path": "ok.onnx", "input_size": [32, 32]},
        {"id": "r", "arch": "resnet18", "num_classes": 10, "input_size": [64, 64],
         "checkpoint": "w.pt"}], quantization={"modes": ["ort_fp32"]})
    code = ("import sys; from qbench.cli import app; "
            f"app(['validate', {str(manifest)!r}], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid, 2 unit(s)" in proc.stdout
