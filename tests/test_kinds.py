"""Task kinds and mode registry: what each task and mode declares about itself."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from qbench.models.base import LoadedModel
from qbench.models.kinds import KINDS, kind_named
from qbench.modes import MIXED_COLUMNS, MODES
from qbench.quantize.common import keep_float_inside
from qbench.quantize.mixed_search import (
    Evaluator,
    MixedPrecision,
    MixedSearch,
    SensitivityResult,
    Trial,
)
from qbench.quantize.registry import SearchTarget
from qbench.results import MODELS

WORKER = Path(__file__).resolve().parents[1] / "worker"
TASK_COMPARISON = re.compile(r"task\s*(==|!=)|\.task\s+(not\s+)?in\b")


def test_no_module_outside_the_kinds_compares_task_names():
    offenders = []
    for path in sorted(WORKER.rglob("*.py")):
        if "kinds" in path.relative_to(WORKER).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if TASK_COMPARISON.search(line):
                offenders.append(f"{path.relative_to(WORKER)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_loaded_model_carries_the_kind_of_its_task():
    for name, kind in KINDS.items():
        assert kind.name == name and kind_named(name) is kind
    loaded = LoadedModel("m", "m", "classification", nn.Identity(), (8, 8), 3)
    assert loaded.kind is KINDS["classification"] and loaded.task == "classification"
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(loaded.predict_fp32(x), x)


def test_detection_kind_feeds_images_as_a_list():
    seen = []

    class ListModel(nn.Module):
        def forward(self, images):
            seen.append(type(images))
            return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                     "scores": torch.zeros(0)} for _ in images]

    out = KINDS["detection"].run(ListModel(), torch.rand(3, 3, 8, 8), per_image=True)
    assert seen == [list, list, list] and len(out) == 3


def test_keep_float_inside_lists_outermost_matches_once():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), nn.Conv2d(4, 4, 1))
    # "0" matches the block and (through its parent) both children: only the block is named.
    assert keep_float_inside(net, "", ["0"]) == {"0": "0"}
    assert keep_float_inside(net, "body", ["body.0.*", "body.1"]) == {"0.0": "body.0.*",
                                                                      "0.1": "body.0.*",
                                                                      "1": "body.1"}


def test_registry_says_which_modes_are_references_and_their_extra_columns():
    all_modes = MODES
    assert {m for m, i in all_modes.items() if i.reference} == {"fp32", "fp32_compiled", "ort_fp32"}
    extra = {m: i.extra_columns for m, i in all_modes.items() if i.extra_columns}
    assert extra == {"int8_mixed": MIXED_COLUMNS, "ort_int8_mixed": MIXED_COLUMNS,
                     "ov_int8_mixed": MIXED_COLUMNS}
    assert set(MIXED_COLUMNS) <= set(MODELS.names)


def test_mixed_search_fills_exactly_its_declared_columns():
    base, better = Trial((), 0.5, 10), Trial(("layer1",), 0.9, 12)
    sens = SensitivityResult(base, [], Evaluator(lambda g: None, lambda q: 0.0))
    search = MixedPrecision(0.8, True, ["layer1"], better, [base, better])
    outcome = MixedSearch(sens, search, SearchTarget(lambda q: 0.0, 0.8, "agreement"))
    assert tuple(outcome.columns()) == MIXED_COLUMNS
    assert outcome.columns()["mixed_float_groups"] == ["layer1"]
    assert "kept float layer1" in outcome.note() and "(met: 0.900" in outcome.note()


def test_models_row_is_assembled_from_typed_results():
    from qbench.model_row import Backend, ParamsResult, SizeResult, assemble, join_notes

    parts = [Backend("torch-fx-x86"), SizeResult(250, 1000),
             ParamsResult({"float32": 10, "qint8": 30}, ("a", "b"), ("c",))]
    row = assemble({"unit_id": "u", "input_h": 1}, parts, status="ok", error=None,
                   notes=join_notes(["q notes", None, "", "artifact saved"]), ended_at=5)
    assert row["size_reduction"] == 0.75 and row["params_int8_fraction"] == 0.75
    assert row["int8_module_count"] == 2 and row["float_modules"] == ["c"]
    assert row["backend"] == "torch-fx-x86" and row["notes"] == "q notes; artifact saved"
    assert (row["unit_id"], row["status"], row["ended_at"]) == ("u", "ok", 5)
    assert set(row) - {"unit_id", "input_h", "status", "error", "ended_at", "notes"} <= set(
        MODELS.names)
    failed = assemble({"unit_id": "u"}, [], status="error", error="E: x", notes=None, ended_at=1)
    assert "notes" not in failed and failed["error"] == "E: x"
