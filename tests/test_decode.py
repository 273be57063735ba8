"""Decoders on hand-built output tensors with known boxes; layout checks; category maps."""

from __future__ import annotations

import pytest
import torch

from qbench.decode.decoders import DecodeError, decode
from qbench.decode.layout import layout_problem
from qbench.decode.spec import COCO80_TO_COCO91, OutputsSpec, category_mapping


def test_ultralytics_layout_decodes_known_boxes_and_suppresses_duplicates():
    # 3 classes, 5 anchors: two overlapping boxes of class 1, one box of class 2, two empty
    pred = torch.zeros(1, 4 + 3, 5)
    pred[0, :4, 0] = torch.tensor([50., 40., 20., 10.])   # cx cy w h -> 40 35 60 45
    pred[0, 5, 0] = 0.9
    pred[0, :4, 1] = torch.tensor([51., 40., 20., 10.])   # near-duplicate, lower score
    pred[0, 5, 1] = 0.8
    pred[0, :4, 2] = torch.tensor([10., 10., 4., 4.])
    pred[0, 6, 2] = 0.7
    (det,) = decode(pred, OutputsSpec(decoder="ultralytics", iou_threshold=0.5), (64, 64))
    assert det["labels"].tolist() == [1, 2]
    assert torch.allclose(det["boxes"][0], torch.tensor([40., 35., 60., 45.]))
    assert torch.allclose(det["boxes"][1], torch.tensor([8., 8., 12., 12.]))
    assert det["scores"].tolist() == pytest.approx([0.9, 0.7])


def test_ultralytics_nms_is_class_wise():
    pred = torch.zeros(1, 4 + 2, 2)
    pred[0, :4, :] = torch.tensor([[50.], [40.], [20.], [10.]])  # the same box twice
    pred[0, 4, 0], pred[0, 5, 1] = 0.9, 0.6  # ... as two different classes: both stay
    (det,) = decode(pred, OutputsSpec(decoder="ultralytics"), (64, 64))
    assert sorted(det["labels"].tolist()) == [0, 1]


def test_ssd_layout_normalised_cxcywh_with_background():
    boxes = torch.tensor([[[0.5, 0.5, 0.25, 0.5], [0.1, 0.1, 0.1, 0.1]]])
    scores = torch.tensor([[[0.1, 0.05, 0.85], [0.99, 0.0, 0.0]]])  # 2nd: only background
    spec = OutputsSpec(decoder="ssd", box_format="cxcywh", normalized_boxes=True,
                       background_class=True, score_threshold=0.3)
    (det,) = decode([boxes, scores], spec, (100, 200))  # h 100, w 200
    assert det["labels"].tolist() == [2]
    assert torch.allclose(det["boxes"][0], torch.tensor([75., 25., 125., 75.]))


def test_gfl_integral_decoding_of_hand_built_distributions():
    reg_max, strides, size = 7, (8, 16), (32, 32)
    n = [(32 // s) ** 2 for s in strides]  # 16 and 4 cells
    scores = [torch.zeros(1, k, 2) for k in n]
    dists = [torch.full((1, k, 4 * (reg_max + 1)), -30.0) for k in n]
    # stride 16, cell (row 0, col 1): centre (24, 8); distances l,t,r,b = 1, 0.5, 2, 1 bins
    cell, bins = 1, [1.0, 0.5, 2.0, 1.0]
    for side, value in enumerate(bins):  # put the mass of each distribution on its value
        row = dists[1][0, cell].view(4, reg_max + 1)[side]
        lo = int(value)
        frac = value - lo
        row[lo] = torch.log(torch.tensor(1 - frac)) if frac < 1 else -30
        if frac:
            row[lo + 1] = torch.log(torch.tensor(frac))
    scores[1][0, cell, 1] = 0.8
    spec = OutputsSpec(decoder="gfl", strides=strides, reg_max=reg_max, score_threshold=0.5)
    (det,) = decode([*scores, *dists], spec, size)
    assert det["labels"].tolist() == [1]
    # x1 = 24 - 16, y1 = 8 - 8, x2 = 24 + 32, y2 = 8 + 16
    assert torch.allclose(det["boxes"][0], torch.tensor([8., 0., 56., 24.]), atol=1e-3)


def test_gfl_wrong_cell_count_names_the_field():
    spec = OutputsSpec(decoder="gfl", strides=(8,), reg_max=3)
    with pytest.raises(DecodeError, match="outputs.decoder gfl: stride 8"):
        decode([torch.zeros(1, 5, 2), torch.zeros(1, 5, 16)], spec, (32, 32))


def test_torchvision_layout_by_name_and_threshold():
    out = {"scores": torch.tensor([0.9, 0.01]), "labels": torch.tensor([3, 4]),
           "boxes": torch.tensor([[0., 0., 5., 5.], [1., 1., 2., 2.]])}
    (det,) = decode(out, OutputsSpec(decoder="torchvision", score_threshold=0.05), (8, 8))
    assert det["labels"].tolist() == [3] and det["boxes"].shape == (1, 4)


def test_wrong_layout_is_one_line_naming_the_decoder():
    with pytest.raises(DecodeError, match="outputs.decoder ultralytics"):
        decode(torch.zeros(2, 3), OutputsSpec(decoder="ultralytics"), (8, 8))
    problem = layout_problem(OutputsSpec(decoder="ssd"), [("output0", [1, 84, 8400])])
    assert "decoder ssd expects two outputs" in problem and "\n" not in problem
    assert layout_problem(OutputsSpec(decoder="ultralytics"), [("output0", [1, 84, 8400])]) is None
    assert layout_problem(OutputsSpec(decoder="gfl", strides=(8, 16), reg_max=7),
                          [("a", [1, 16, 10]), ("b", [1, 4, 10]), ("c", [1, 16, 32]),
                           ("d", [1, 4, 32])]) is None


def test_coco80_map_is_coco_ids():
    mapping = category_mapping(OutputsSpec(decoder="ultralytics", category_map="coco80"))
    assert len(mapping) == 80 and mapping[0] == 1 and mapping[79] == 90
    assert len(set(COCO80_TO_COCO91)) == 80 and 12 not in COCO80_TO_COCO91
