"""The shipped fixture detector loads safely and is accurate on fresh synthetic scenes."""

from __future__ import annotations

import json

import torch
from torch import nn

from qbench.evaluate import coco, synth
from qbench.models import fixture

TEST_SEED = 424242  # neither the training stream nor the script's held-out seed


def test_weights_are_a_plain_state_dict():
    assert fixture.WEIGHTS.stat().st_size <= 10 * 2**20
    state = torch.load(fixture.WEIGHTS, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    record = json.loads(fixture.WEIGHTS.with_suffix(".json").read_text())
    assert TEST_SEED not in (record["train_seed"], record["eval_seed"])
    assert record["classes"] == list(synth.CLASSES)


def test_fixture_is_quantizable_shape():
    model = fixture.build_fixture(pretrained=False)
    assert not model.training
    kinds = {type(m).__name__ for m in model.modules()}
    assert "BatchNorm2d" in kinds and "FrozenBatchNorm2d" not in kinds
    assert model.roi_heads.box_predictor.cls_score.out_features == len(synth.CLASSES) + 1
    assert isinstance(model.backbone.body.layer1[0][2], nn.ReLU)


def test_fixture_map50_on_held_out_scenes(tmp_path):
    model = fixture.build_fixture()
    ann = synth.generate_dataset(tmp_path, TEST_SEED, images=24, size=fixture.INPUT_SIZE)
    ds = coco.load_coco(tmp_path / "images", ann, num_classes=fixture.NUM_CLASSES)
    batch, scales = coco.load_batch(ds, ds.image_ids, fixture.INPUT_SIZE)
    with torch.inference_mode():
        outputs = model(list(batch))
    metrics = coco.evaluate_detections(ann, coco.to_coco_results(ds.image_ids, outputs, scales))
    assert metrics["map50"] >= 0.70, metrics
