"""KITTI, YOLO and Pascal VOC datasets: written by the tests from known boxes, read back into
the COCO document, scored alike through the real pipeline, and bad labels refused at validate
in one line naming the file and line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from qbench.evaluate.coco import evaluate_detections
from qbench.evaluate.formats import read_labels
from qbench.evaluate.synth import generate_dataset
from qbench.orchestrate import plan_job, save_plan
from qbench.pipeline import run_unit
from qbench.report import write_report
from qbench.results import read_table
from tests.helpers import qbench, small_manifest
from tests.label_formats import write_formats


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    generate_dataset(root / "data", seed=5, images=12, size=(128, 128))
    blocks = write_formats(root / "data/images", root / "data/annotations.json",
                           root / "data/fmt", root)
    blocks["coco"] = {"format": "coco", "images": "data/images",
                      "annotations": "data/annotations.json"}
    return root, blocks


def _folder(root: Path, block: dict, key: str) -> Path:
    return root / block[key]


@pytest.mark.parametrize("fmt", ["kitti", "yolo", "voc"])
def test_each_reader_gives_the_coco_document(formats, fmt):
    root, blocks = formats
    coco = json.loads((root / "data/annotations.json").read_text())
    block = blocks[fmt]
    labels = {"kitti": "label_2", "yolo": "labels", "voc": "Annotations"}[fmt]
    images = _folder(root, block, "images")
    doc = read_labels(fmt, images, images.parent / labels, block.get("classes"),
                      root / block["data_yaml"] if "data_yaml" in block else None)
    assert [c["name"] for c in doc["categories"]] == [c["name"] for c in coco["categories"]]
    assert [im["file_name"] for im in doc["images"]] == [im["file_name"] for im in coco["images"]]
    ours = sorted((a["image_id"], a["category_id"], *(round(v, 6) for v in a["bbox"]))
                  for a in doc["annotations"])
    theirs = sorted((a["image_id"], a["category_id"], *(round(float(v), 6) for v in a["bbox"]))
                    for a in coco["annotations"])
    assert ours == theirs


def _run(root: Path, name: str, dataset: dict, modes: list[str]):
    manifest = small_manifest(
        root, name=name, models=[{"id": "fixture", "arch": "fixture", "input_size": [128, 128]}],
        quantization={"modes": modes, "calibration": {"images": 4}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1,
                   "pairing": "off", "rounds": 1},
        inspect={"images": 0}, artifacts=False, dataset=dataset)
    plan = plan_job(manifest)
    save_plan(plan, root / "results")
    for unit in plan.units:
        outcome = run_unit(unit, root / "results")
        assert outcome.status == "ok", outcome.error
    models = {m["mode"]: m for m in read_table(root / "results", "models", plan.job_id).to_pylist()}
    classes = read_table(root / "results", "class_metrics", plan.job_id).to_pylist()
    return plan, models, classes


def test_the_fixture_scores_the_same_map_through_every_format(formats):
    """The fixture detector on the same boxes written four ways: the same mAP and per-class AP
    (the quickstart's check, on a smaller split)."""
    root, blocks = formats
    scores = {}
    for fmt in ("coco", "kitti", "yolo", "voc"):
        _, models, classes = _run(root, f"same-{fmt}", blocks[fmt], ["fp32"])
        scores[fmt] = (models["fp32"]["map"], models["fp32"]["map50"],
                       sorted((c["class"], c["gt_count"], c["ap"], c["ap50"]) for c in classes))
    assert scores["coco"][0] > 0.5
    for fmt in ("kitti", "yolo", "voc"):
        assert scores[fmt][:2] == pytest.approx(scores["coco"][:2], abs=1e-12), fmt
        assert scores[fmt][2] == scores["coco"][2], fmt


def test_kitti_int8_has_class_rows_kitti_columns_and_a_report(formats):
    root, blocks = formats
    plan, models, classes = _run(root, "kitti-int8", blocks["kitti"], ["fp32", "int8_static"])
    int8 = models["int8_static"]
    assert int8["kitti_ap_moderate_fp32"] == pytest.approx(models["fp32"]["kitti_ap_moderate"])
    assert int8["kitti_ap_moderate_drop_pts_ci_low"] is not None
    rows = [c for c in classes if c["mode"] == "int8_static"]
    assert sorted(c["class"] for c in rows) == ["circle", "cross", "square", "triangle"]
    for c in rows:
        assert c["kitti_iou_threshold"] == 0.5 and c["ap_fp32"] is not None
        assert c["ap_drop_pts_ci_low"] <= 100 * (c["ap_fp32"] - c["ap"]) + 1e-9
    report = write_report(root / "results", plan.job_id)
    text = (report.folder / "report.md").read_text()
    assert "Accuracy per class" in text and "KITTI AP moderate" in text
    assert "Accuracy per class" in (report.folder / "report.html").read_text()
    header = (report.folder / "summary.csv").read_text().splitlines()[0]
    assert "worst_class_ap_drop_pts_ci_low" in header and "kitti_ap_moderate" in header


def test_dont_care_and_difficult_are_ignore_regions_for_coco_map(tmp_path):
    Image.new("RGB", (100, 80)).save(tmp_path / "a.png")
    (tmp_path / "label_2").mkdir()
    (tmp_path / "label_2/a.txt").write_text(
        "Car 0.00 0 -10 10.00 10.00 40.00 40.00 -1 -1 -1 -1000 -1000 -1000 -10\n"
        "DontCare -1 -1 -10 50.00 10.00 95.00 70.00 -1 -1 -1 -1000 -1000 -1000 -10\n")
    doc = read_labels("kitti", tmp_path, tmp_path / "label_2", ["Car"], None)
    hit = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9}
    in_region = {"image_id": 1, "category_id": 1, "bbox": [60, 20, 20, 20], "score": 0.95}
    elsewhere = {"image_id": 1, "category_id": 1, "bbox": [10, 45, 20, 20], "score": 0.95}
    assert evaluate_detections(doc, [hit, in_region])["map"] == pytest.approx(1.0)
    assert evaluate_detections(doc, [hit, elsewhere])["map"] < 0.6
    # VOC: a difficult object found is no true positive, and no false positive either
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml/a.xml").write_text(
        "<annotation><object><name>car</name><difficult>0</difficult><bndbox><xmin>11</xmin>"
        "<ymin>11</ymin><xmax>40</xmax><ymax>40</ymax></bndbox></object><object><name>car"
        "</name><difficult>1</difficult><bndbox><xmin>61</xmin><ymin>21</ymin><xmax>80</xmax>"
        "<ymax>40</ymax></bndbox></object></annotation>")
    doc = read_labels("voc", tmp_path, tmp_path / "xml", ["car"], None)
    assert evaluate_detections(doc, [hit, in_region])["map"] == pytest.approx(1.0)


def test_a_yolo_image_without_a_label_file_has_no_objects(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (64, 32)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels/a.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    doc = read_labels("yolo", tmp_path / "images", tmp_path / "labels", ["thing"], None)
    assert len(doc["images"]) == 2
    assert [a["bbox"] for a in doc["annotations"]] == [[24.0, 8.0, 16.0, 16.0]]


# -- bad labels, through the real CLI ------------------------------------------------------

KITTI_LINE = "Car 0.00 0 -10 10.00 10.00 40.00 40.00 -1 -1 -1 -1000 -1000 -1000 -10\n"


def _kitti(tmp: Path, line: str = KITTI_LINE, extra: dict | None = None) -> dict:
    (tmp / "image_2").mkdir()
    (tmp / "label_2").mkdir()
    Image.new("RGB", (100, 80)).save(tmp / "image_2/000000.png")
    (tmp / "label_2/000000.txt").write_text(line)
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text)
    return {"format": "kitti", "images": "image_2", "classes": ["Car"]}


def _yolo(tmp: Path, line: str) -> dict:
    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    Image.new("RGB", (100, 80)).save(tmp / "images/a.png")
    (tmp / "labels/a.txt").write_text(line)
    return {"format": "yolo", "images": "images", "classes": ["thing"]}


def _voc(tmp: Path, xml: str) -> dict:
    (tmp / "JPEGImages").mkdir()
    (tmp / "Annotations").mkdir()
    Image.new("RGB", (100, 80)).save(tmp / "JPEGImages/a.jpg")
    (tmp / "Annotations/a.xml").write_text(xml)
    return {"format": "voc", "images": "JPEGImages"}


def _voc_object(name: str = "car", box: str = "11 11 40 40") -> str:
    x1, y1, x2, y2 = box.split()
    return (f"<annotation>\n<object>\n<name>{name}</name>\n<bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>\n</object>\n"
            "</annotation>\n")


BOMB = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
                  for i in range(1, 10))
        + ']>\n<annotation><object><name>&lol9;</name></object></annotation>\n')


def _symlinked_label(tmp: Path) -> dict:
    block = _kitti(tmp)
    outside = tmp.parent.parent / f"{tmp.parent.name}-outside.txt"  # beyond the manifest folder
    outside.write_text(KITTI_LINE)
    (tmp / "label_2/000000.txt").unlink()
    os.symlink(outside, tmp / "label_2/000000.txt")
    return block


BAD = {
    "kitti_unknown_class": (lambda t: _kitti(t, KITTI_LINE.replace("Car", "Spaceship")),
                            "000000.txt:1: unknown class 'Spaceship'"),
    "kitti_malformed_line": (lambda t: _kitti(t, KITTI_LINE + "Car 0 0 10 10\n"),
                             "000000.txt:2: 5 fields"),
    "kitti_not_a_number": (lambda t: _kitti(t, KITTI_LINE.replace("10.00 10.00", "ten 10")),
                           "000000.txt:1: fields after the type must be numbers"),
    "kitti_box_outside_image": (lambda t: _kitti(t, KITTI_LINE.replace("40.00 40.00",
                                                                       "140.00 40.00")),
                                "000000.txt:1: box (10, 10, 140, 40) lies outside the 100x80"),
    "kitti_label_without_image": (lambda t: _kitti(t, extra={"label_2/000001.txt": ""}),
                                  "000001.txt: label file without an image"),
    "kitti_image_without_label": (
        lambda t: (_kitti(t), Image.new("RGB", (8, 8)).save(t / "image_2/000001.png"))[0],
        "000001.png: image without a label file 000001.txt"),
    "kitti_label_symlinked_out": (_symlinked_label, "resolves outside the dataset's folders"),
    "kitti_iou_threshold_of_no_class": (
        lambda t: {**_kitti(t), "iou_thresholds": {"Tram": 0.5}},
        "dataset: iou_thresholds.Tram: not one of the classes (Car)"),
    "yolo_unknown_class": (lambda t: _yolo(t, "3 0.5 0.5 0.2 0.2\n"),
                           "a.txt:1: unknown class 3 (the names have indices 0..0)"),
    "yolo_segment_line": (lambda t: _yolo(t, "0 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.2 0.1 0.2 0.2\n"),
                          "a.txt:2: 7 fields"),
    "yolo_box_outside_image": (lambda t: _yolo(t, "0 0.95 0.5 0.2 0.2\n"),
                               "a.txt:1: box (85, 32, 105, 48) lies outside the 100x80 image"),
    "voc_unknown_class": (lambda t: _voc(t, _voc_object("spaceship")),
                          "a.xml:2: unknown class 'spaceship'"),
    "voc_box_outside_image": (lambda t: _voc(t, _voc_object(box="11 11 40 90")),
                              "a.xml:2: box (10, 10, 40, 90) lies outside"),
    "voc_not_xml": (lambda t: _voc(t, "<annotation><object></annotation>"),
                    "a.xml:1: not well-formed XML"),
    "voc_entity_bomb": (lambda t: _voc(t, BOMB), "a.xml: refused XML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_labels_are_refused_at_validate_in_one_line(tmp_path, case):
    build, needle = BAD[case]
    data = tmp_path / "data"
    data.mkdir()
    block = build(data)
    block = {**block, "images": f"data/{block['images']}"}
    manifest = {"name": "bad", "models": [{"id": "det", "arch": "fixture",
                                           "input_size": [64, 64]}],
                "quantization": {"modes": ["fp32"]},
                "benchmark": {"batch_sizes": [1], "warmup": 0, "iterations": 1},
                "dataset": block}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    proc = qbench("validate", str(tmp_path / "m.yaml"))
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout + err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_good_labels_validate_with_a_category_map_for_a_coco_detector(tmp_path):
    """A COCO-trained torchvision detector on KITTI: its labels (car 3, person 1, bicycle 2)
    map onto the dataset's classes."""
    data = tmp_path / "data"
    data.mkdir()
    block = _kitti(data, KITTI_LINE + KITTI_LINE.replace("Car", "Pedestrian")
                   + KITTI_LINE.replace("Car", "Van"))
    block = {**block, "images": "data/image_2", "classes": ["Car", "Pedestrian", "Cyclist"]}
    model = {"id": "frcnn", "arch": "fasterrcnn_mobilenet_v3_large_320_fpn",
             "input_size": [320, 320], "outputs": {"category_map": {3: 1, 1: 2, 2: 3}}}
    manifest = {"name": "good", "models": [model], "quantization": {"modes": ["fp32"]},
                "benchmark": {"batch_sizes": [1], "warmup": 0, "iterations": 1},
                "dataset": block}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    proc = qbench("validate", str(tmp_path / "m.yaml"))
    assert proc.returncode == 0, proc.stderr
    manifest["models"][0]["outputs"]["category_map"] = {3: 1, 1: 2}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    proc = qbench("validate", str(tmp_path / "m.yaml"))
    assert proc.returncode == 2 and "category ids [3] are absent from the map" in proc.stderr


def test_submit_stages_the_labels_folder_and_a_worker_reads_the_copy(tmp_path, monkeypatch):
    """The KITTI labels and a YOLO data.yaml travel with the images: the unit runs from the
    results store alone, and the labels are part of the dataset's digest."""
    from qbench.service.staging import stage_plan

    src = tmp_path / "host"
    generate_dataset(src / "coco", seed=2, images=6, size=(64, 64))
    blocks = write_formats(src / "coco/images", src / "coco/annotations.json", src / "fmt", src)
    for fmt in ("kitti", "yolo"):
        manifest = small_manifest(
            src, name=f"staged-{fmt}",
            models=[{"id": "fixture", "arch": "fixture", "input_size": [64, 64]}],
            quantization={"modes": ["fp32"], "calibration": {"images": 2}},
            benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1,
                       "pairing": "off", "rounds": 1},
            inspect={"images": 0}, artifacts=False, dataset=blocks[fmt])
        store = tmp_path / "store"
        unit = stage_plan(plan_job(manifest), store).units[0]
        labels = unit.dataset.label_folder
        assert labels in unit.staged and unit.dataset.images in unit.staged
        if fmt == "yolo":
            assert unit.dataset.data_yaml in unit.staged
        first = unit.dataset_sha256
        label = sorted((src / labels).iterdir())[0]
        label.write_text(label.read_text() + "\n")  # a label changed: another dataset digest
        assert stage_plan(plan_job(manifest), store).units[0].dataset_sha256 != first
        monkeypatch.setenv("QBENCH_RESULTS_DIR", str(store))
        moved = tmp_path / "moved"
        src.rename(moved)  # the submitter's files are gone: the store alone serves the unit
        try:
            outcome = run_unit(unit, store)
        finally:
            moved.rename(src)
        assert outcome.status == "ok", outcome.error
        assert outcome.model_row["map"] is not None


def test_a_decoded_model_on_a_yolo_dataset_maps_its_labels_by_the_data_yaml(formats):
    """An ultralytics model trained on the dataset outputs label i for data.yaml's names[i];
    with `classes` picking and ordering a subset, label i still lands on its named class."""
    from qbench.evaluate.datasets import category_map_for
    from qbench.manifest import Unit

    root, blocks = formats
    images = root / blocks["yolo"]["images"]
    names = root / blocks["yolo"]["data_yaml"]
    doc = read_labels("yolo", images, images.parent / "labels", ["triangle", "circle"], names)
    unit = Unit.model_validate({
        "job_id": "j-20261207T000000-abcdef", "job_name": "j", "job_date": "2026-12-07",
        "unit_id": "u", "mode": "ort_fp32", "device": "cpu", "base_dir": str(root),
        "model": {"id": "y", "source": "onnx", "path": "y.onnx",
                  "outputs": {"decoder": "ultralytics"}},
        "quantization": {}, "benchmark": {}, "inspect": {},
        "dataset": {**blocks["yolo"], "classes": ["triangle", "circle"]}})
    assert category_map_for(unit, doc) == {0: 2, 2: 1}  # circle is index 0, triangle 2
    declared = unit.model_copy(update={"model": unit.model.model_copy(update={
        "outputs": unit.model.outputs.model_copy(update={"category_map": {5: 1}})})})
    assert category_map_for(declared, doc) == {5: 1}  # a declared map wins


def test_dataset_fields_belong_to_their_formats():
    from qbench.manifest import ManifestError, parse_manifest

    head = "name: a\nmodels: [{id: d, arch: fixture}]\ndataset: "
    ok = parse_manifest(head + "{format: voc, images: x, classes: ['traffic light', car]}\n")
    assert ok.dataset.classes == ["traffic light", "car"]  # VOC and YOLO names may have spaces
    assert ok.dataset.label_folder == "Annotations"
    for block, needle in (
            ("{format: kitti, images: x, classes: ['traffic light']}", "one word"),
            ("{format: coco, images: x, annotations: a.json, classes: [a]}", "classes is for"),
            ("{format: kitti, images: x, annotations: a.json}", "reads labels (a folder)"),
            ("{format: yolo, images: x}", "format yolo needs class names"),
            ("{format: voc, images: x, iou_thresholds: {car: 0.5}}", "for format kitti"),
            ("{format: kitti, images: x, iou_thresholds: {Car: 1.5}}", "not within (0, 1]"),
            ("{format: kitti, images: x, classes: [Car, car]}", "listed twice")):
        with pytest.raises(ManifestError, match=re.escape(needle)):
            parse_manifest(head + block + "\n")
    yolo = parse_manifest(head + "{format: yolo, images: data/set/images/val, classes: [a]}\n")
    assert yolo.dataset.label_folder == "data/set/labels/val"  # ultralytics' rule
