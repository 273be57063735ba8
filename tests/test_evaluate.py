"""Synthetic scenes, COCO loading and mAP, agreement with fp32."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from qbench.evaluate import agreement, coco, synth


def test_render_scene_shapes_and_ranges():
    img, boxes, labels = synth.render_scene(np.random.default_rng(3), (96, 128))
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    assert len(boxes) == len(labels) >= 1
    assert (labels >= 1).all() and (labels <= len(synth.CLASSES)).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_synth_is_deterministic_per_seed():
    a = synth.render_scene(np.random.default_rng(7), (64, 64))
    b = synth.render_scene(np.random.default_rng(7), (64, 64))
    c = synth.render_scene(np.random.default_rng(8), (64, 64))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    x = synth.synth_images(3, (48, 64), seed=1)
    assert x.shape == (3, 3, 48, 64) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x, synth.synth_images(3, (48, 64), seed=1))
    assert not torch.equal(x, synth.synth_images(3, (48, 64), seed=2))


def test_generate_dataset_is_valid_coco_and_byte_identical(tmp_path):
    from pycocotools.coco import COCO

    ann = synth.generate_dataset(tmp_path / "a", seed=5, images=4, size=(64, 64))
    again = synth.generate_dataset(tmp_path / "b", seed=5, images=4, size=(64, 64))
    assert ann.read_bytes() == again.read_bytes()
    for name in ("000000.png", "000003.png"):
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes()
    other = synth.generate_dataset(tmp_path / "c", seed=6, images=4, size=(64, 64))
    assert other.read_bytes() != ann.read_bytes()
    gt = COCO(str(ann))
    assert len(gt.getImgIds()) == 4 and len(gt.getAnnIds()) >= 4
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(synth.CLASSES)
    ds = coco.load_coco(tmp_path / "a/images", ann, num_classes=len(synth.CLASSES) + 1)
    batch, scales = coco.load_batch(ds, ds.image_ids[:2], (32, 48))
    assert batch.shape == (2, 3, 32, 48) and scales == [(48 / 64, 32 / 64)] * 2


def _gt_doc():
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 4):
        _, boxes, labels = synth.render_scene(rng, (128, 128))
        images.append({"id": i, "file_name": f"{i}.png", "width": 128, "height": 128})
        for (x1, y1, x2, y2), lab in zip(boxes.tolist(), labels.tolist(), strict=True):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": lab,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(synth.CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}


def test_evaluate_detections_perfect_shifted_and_empty(tmp_path):
    doc = _gt_doc()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in doc["annotations"]]
    m = coco.evaluate_detections(doc, perfect)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    shifted = [dict(p, bbox=[p["bbox"][0] + 0.3 * p["bbox"][2], *p["bbox"][1:]]) for p in perfect]
    s = coco.evaluate_detections(doc, shifted)
    assert s["map"] < m["map"]
    assert coco.evaluate_detections(doc, []) == {"map": 0.0, "map50": 0.0}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    assert coco.evaluate_detections(path, perfect)["map"] == pytest.approx(1.0)
    # restricted to one image: only that image's predictions count
    one = coco.evaluate_detections(doc, [p for p in perfect if p["image_id"] == 2], image_ids=[2])
    assert one["map"] == pytest.approx(1.0)


def test_to_coco_results_maps_back_to_original_size():
    out = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.8]),
            "labels": torch.tensor([2])}]
    res = coco.to_coco_results([7], out, [(0.5, 2.0)])
    assert res == [{"image_id": 7, "category_id": 2, "bbox": [20.0, 10.0, 40.0, 20.0], "score": pytest.approx(0.8)}]


def test_split_is_deterministic_and_disjoint():
    ids = list(range(1, 21))
    calib, rest = coco.split(ids, 5, seed=3)
    assert (calib, rest) == coco.split(ids, 5, seed=3)
    assert len(calib) == 5 and not set(calib) & set(rest) and sorted(calib + rest) == ids
    assert coco.split(ids, 5, seed=4)[0] != calib
    with pytest.raises(coco.DatasetError, match="at least one"):
        coco.split(ids, 20, seed=0)


def test_bad_inputs_name_the_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    missing = tmp_path / "nope.json"
    with pytest.raises(coco.DatasetError, match="nope.json"):
        coco.load_coco(images, missing)
    notcoco = tmp_path / "notcoco.json"
    notcoco.write_text(json.dumps({"images": []}))
    with pytest.raises(coco.DatasetError, match=r"notcoco.json.*missing keys: annotations, categories"):
        coco.load_coco(images, notcoco)
    nobox = tmp_path / "nobox.json"
    nobox.write_text(json.dumps({"images": [], "categories": [], "annotations": [{"image_id": 1}]}))
    with pytest.raises(coco.DatasetError, match=r"nobox.json: annotations\[0\] needs"):
        coco.load_coco(images, nobox)
    doc = _gt_doc()
    doc["images"][0]["file_name"] = "broken.png"
    good = tmp_path / "ann.json"
    good.write_text(json.dumps(doc))
    with pytest.raises(coco.DatasetError, match=r"ann.json.*category ids \[3, 4\].*num_classes=3"):
        coco.load_coco(images, good, num_classes=3)
    ds = coco.load_coco(images, good, num_classes=5)
    (images / "broken.png").write_bytes(b"not a png")
    with pytest.raises(coco.DatasetError, match="broken.png: cannot decode"):
        coco.load_batch(ds, [1], (32, 32))
    with pytest.raises(coco.DatasetError, match=r"2.png: image file does not exist"):
        coco.load_batch(ds, [2], (32, 32))


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_detection_agreement_identical_and_dropped_box():
    ref = [_det([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]], [0.9, 0.8, 0.7], [1, 2, 3]),
           _det([[5, 5, 25, 25]], [0.95], [4])]
    same = agreement.detection_agreement(ref, ref)
    assert same["precision"] == same["recall"] == 1.0
    assert same["count_error_mean"] == same["count_error_std"] == 0.0
    assert same["mean_iou"] == pytest.approx(1.0) and same["score_abs_diff_mean"] == 0.0
    # drop the 2nd box of image 0: per-image errors [1/3, 0] -> mean 1/6, std 1/6
    dropped = [_det([[0, 0, 10, 10], [50, 50, 60, 70]], [0.9, 0.7], [1, 3]), ref[1]]
    d = agreement.detection_agreement(ref, dropped)
    assert d["precision"] == 1.0 and d["recall"] == pytest.approx(3 / 4)
    assert d["count_error_mean"] == pytest.approx(1 / 6) and d["count_error_std"] == pytest.approx(1 / 6)


def test_detection_agreement_labels_iou_and_threshold():
    ref = [_det([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.3], [1, 2])]
    wrong_label = [_det([[0, 0, 10, 10]], [0.9], [2])]
    assert agreement.detection_agreement(ref, wrong_label)["recall"] == 0.0
    # shifted by 3 px: IoU 70/130 >= 0.5 matches; by 6 px (IoU 0.25) does not
    near = [_det([[3, 0, 13, 10]], [0.6], [1])]
    n = agreement.detection_agreement(ref, near)
    assert n["recall"] == 1.0 and n["mean_iou"] == pytest.approx(7 / 13)
    assert n["score_abs_diff_mean"] == pytest.approx(0.3)
    far = [_det([[6, 0, 16, 10]], [0.6], [1])]
    assert agreement.detection_agreement(ref, far)["precision"] == 0.0
    # the 0.3-score fp32 box counts only below a 0.3 threshold
    low = agreement.detection_agreement(ref, [ref[0]], score_threshold=0.2)
    assert low["fp32_detections"] == 2 and low["recall"] == 1.0
    empty = agreement.detection_agreement([_det([], [], [])], [_det([], [], [])])
    assert empty["precision"] == empty["recall"] == 1.0 and math.isnan(empty["mean_iou"])


def test_classification_agreement():
    a = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    assert agreement.classification_agreement(a, a) == {"top1_agreement": 1.0, "cosine_mean": pytest.approx(1.0)}
    b = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]])
    r = agreement.classification_agreement(a, b)
    assert r["top1_agreement"] == 0.5 and r["cosine_mean"] < 1.0


def test_decided_agreement_leaves_out_near_ties_fp32_barely_resolved():
    # image 0: fp32 decided (class 0 far ahead), kept; image 1: decided, flipped;
    # image 2: a near-tie (logits 1.0 vs 0.95), flipped
    fp32 = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [1.0, 0.95, -3.0]])
    quant = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 5.0], [0.9, 1.0, -3.0]])
    assert agreement.classification_agreement(fp32, quant)["top1_agreement"] == pytest.approx(1 / 3)
    assert agreement.decided_agreement(fp32, quant) == (0.5, 2)
    # outputs that already are probabilities are not put through softmax again
    probs = torch.tensor([[0.52, 0.48], [0.9, 0.1]])
    assert agreement.decided_agreement(probs, probs.flip(1)) == (0.0, 1)
    assert math.isnan(agreement.decided_agreement(probs[:1], probs[:1])[0])


def test_image_folder_and_topk(tmp_path):
    from qbench.evaluate.image_folder import scan_image_folder
    from qbench.preprocess.spec import PreprocessSpec
    from qbench.preprocess.transform import load_images

    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (20, 10), colour).save(tmp_path / cls / "a.png")
    folder = scan_image_folder(tmp_path, None, 2)  # two folders, two classes: sorted labels
    x, _ = load_images(folder.paths, PreprocessSpec(resize="stretch"), (8, 8))
    assert x.shape == (2, 3, 8, 8) and folder.labels == [0, 1]
    assert [p.parent.name for p in folder.paths] == ["cat", "dog"]
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.0, 0.2, 0.1, 0.0, 0.0, 0.9]])
    acc = coco.topk_accuracy(logits, torch.tensor([1, 2]))
    assert acc == {"top1": 0.5, "top5": 1.0}
    with pytest.raises(coco.DatasetError, match="missing_dir"):
        scan_image_folder(tmp_path / "missing_dir", None, 2)
