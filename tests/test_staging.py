"""A job's inputs are staged into the results store by content and read from there."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from qbench.artifacts.card import build_card
from qbench.manifest import ManifestError
from qbench.orchestrate import plan_job
from qbench.pipeline import run_unit
from qbench.results import read_table
from qbench.service.staging import digest_plan, stage_plan, tree_digest
from tests.helpers import small_manifest


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def job(tmp_path):
    """A manifest beside its own checkpoint and ImageFolder dataset, as on a user's host."""
    src = tmp_path / "host"
    (src / "weights").mkdir(parents=True)
    model = torchvision.models.mobilenet_v3_small(num_classes=2)
    torch.save(model.state_dict(), src / "weights" / "mnv3.pt")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (src / "shapes" / label).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(src / "shapes" / label / f"{i}.png")
    manifest = small_manifest(
        src, name="staged",
        models=[{"id": "m", "arch": "mobilenet_v3_small", "num_classes": 2,
                 "input_size": [32, 32], "checkpoint": "weights/mnv3.pt"}],
        quantization={"modes": ["fp32"], "calibration": {"images": 2, "method": "minmax"}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        dataset={"format": "imagefolder", "images": "shapes"}, inspect={"images": 0},
        artifacts=False)
    return src, manifest


def test_submit_stages_inputs_once_by_content_and_units_read_them_there(job, tmp_path,
                                                                        monkeypatch):
    src, manifest = job
    store = tmp_path / "store"
    plan = stage_plan(plan_job(manifest), store)
    unit = plan.units[0]
    ckpt_sha = _sha(src / "weights" / "mnv3.pt")
    assert unit.checkpoint_sha256 == ckpt_sha
    assert unit.staged["weights/mnv3.pt"] == f"inputs/{ckpt_sha}/mnv3.pt"
    tree = tree_digest(src / "shapes")
    assert unit.staged["shapes"] == f"inputs/{tree}/shapes"
    assert _sha(store / unit.staged["weights/mnv3.pt"]) == ckpt_sha
    assert tree_digest(store / unit.staged["shapes"]) == tree
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    assert not [p for p in before if p.name.startswith(".")], "no temporary file is left"

    again = stage_plan(plan_job(manifest), store)  # a second job naming the same bytes
    assert again.units[0].staged == unit.staged
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before, "written once"

    # The submitter's files are gone (another host): the unit runs from the store alone.
    shutil.rmtree(src)
    monkeypatch.setenv("QBENCH_RESULTS_DIR", str(store))
    outcome = run_unit(unit, store)
    assert outcome.status == "ok", outcome.error
    row = read_table(store, "models", plan.job_id).to_pylist()[0]
    assert row["checkpoint_sha256"] == ckpt_sha
    assert row["dataset_sha256"] == unit.dataset_sha256 and len(row["dataset_sha256"]) == 64
    assert row["eval_images"] and row["top1"] is not None
    card = build_card(row, [], "m-fp32.pt", 1)
    assert card["inputs"] == {"checkpoint_sha256": ckpt_sha, "dataset_sha256": unit.dataset_sha256}


def test_run_records_the_digests_without_copying(job, tmp_path):
    src, manifest = job
    plan = digest_plan(plan_job(manifest))
    assert plan.units[0].checkpoint_sha256 == _sha(src / "weights" / "mnv3.pt")
    assert plan.units[0].staged == {}
    changed = src / "shapes" / "a" / "0.png"
    changed.write_bytes(changed.read_bytes() + b"\0")
    assert digest_plan(plan_job(manifest)).units[0].dataset_sha256 != plan.units[0].dataset_sha256


def test_a_dataset_over_the_limit_is_referenced_only_inside_a_data_root(job, tmp_path,
                                                                        monkeypatch):
    src, manifest = job
    store = tmp_path / "store"
    monkeypatch.setenv("QBENCH_STAGE_MAX_BYTES", "100")
    with pytest.raises(ManifestError, match=r"dataset\.images: .*QBENCH_STAGE_MAX_BYTES=100"):
        stage_plan(plan_job(manifest), store)
    monkeypatch.setenv("QBENCH_DATA_ROOTS", str(src / "shapes"))
    unit = stage_plan(plan_job(manifest), store).units[0]
    assert "shapes" not in unit.staged and "weights/mnv3.pt" in unit.staged
    assert not list(store.glob(f"inputs/{tree_digest(src / 'shapes')}"))
    assert unit.dataset_sha256 is not None, "a referenced dataset is still pinned by digest"


def test_a_staged_path_resolves_only_inside_the_workers_inputs_folder(job, tmp_path,
                                                                      monkeypatch):
    src, manifest = job
    store = tmp_path / "store"
    unit = stage_plan(plan_job(manifest), store).units[0]
    monkeypatch.setenv("QBENCH_RESULTS_DIR", str(store))
    assert unit.resolve("weights/mnv3.pt") == (store / unit.staged["weights/mnv3.pt"]).resolve()
    forged = unit.model_copy(update={"staged": {"weights/mnv3.pt": "inputs/../jobs/x.json"}})
    with pytest.raises(ManifestError, match="outside"):
        forged.resolve("weights/mnv3.pt")
