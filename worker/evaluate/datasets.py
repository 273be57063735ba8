"""A unit's dataset, split once: calibration images never overlap evaluation images."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch

from qbench.evaluate.coco import CocoDataset, DatasetError, confined_file, load_coco, split
from qbench.evaluate.evalset import BATCH, EvalSet
from qbench.evaluate.formats import BOX_FORMATS
from qbench.evaluate.kitti_ap import kitti_thresholds
from qbench.manifest import Unit, input_roots
from qbench.models.base import LoadedModel
from qbench.preprocess.spec import PreprocessSpec
from qbench.preprocess.transform import Geometry, ImageReadError, load_images

SPLIT_SEED = 0  # fixed: every mode of a job calibrates and evaluates on the same images
def _read(paths, spec: PreprocessSpec, size: tuple[int, int]) -> tuple[torch.Tensor, list[Geometry]]:
    try:
        return load_images(list(paths), spec, size)
    except ImageReadError as exc:
        raise DatasetError(str(exc)) from None


def _load(unit: Unit, num_classes: int, size: tuple[int, int], pre: PreprocessSpec,
          torchvision_ids: bool):
    spec = unit.dataset
    images = unit.resolve(spec.images)
    roots = tuple(input_roots(Path(unit.base_dir)))  # every image file is confined like these
    calib_count = unit.quantization.calibration.images
    if spec.format in BOX_FORMATS:
        # torchvision detectors' label i is category id i unless outputs.category_map says
        # otherwise; decoded models go through a mapping
        mapped = unit.model.outputs is not None and unit.model.outputs.category_map is not None
        limit = num_classes if torchvision_ids and not mapped else None
        if spec.format == "coco":
            ds = load_coco(images, unit.resolve(spec.annotations), num_classes=limit,
                           roots=roots)
        else:
            ds = load_labelled(unit, images, limit, roots)
        calib_ids, eval_ids = split(ds.image_ids, calib_count, SPLIT_SEED)
        return ds, calib_ids, eval_ids[: spec.eval_images]
    from qbench.evaluate.image_folder import scan_image_folder

    outputs = unit.model.outputs
    folder = scan_image_folder(images, outputs.labels if outputs else None, num_classes)
    # every entry (a symlink included) must lie inside the folder or the unit's input roots
    paths = [confined_file(images, str(Path(p).relative_to(images)), roots) for p in folder.paths]
    batch, geometries = _read(paths, pre, size)
    labels = torch.tensor(folder.labels, dtype=torch.int64) if folder.labels is not None else None
    calib_ids, eval_ids = split(list(range(len(paths))), calib_count, SPLIT_SEED)
    return (batch, labels, geometries, folder.note), calib_ids, eval_ids[: spec.eval_images]


def load_labelled(unit: Unit, images: Path, num_classes: int | None,
                  roots: tuple[Path, ...]) -> CocoDataset:
    """A KITTI, YOLO or VOC dataset as the COCO reader gives one."""
    from qbench.evaluate.coco_doc import check_coco_document
    from qbench.evaluate.formats import read_labels

    spec = unit.dataset
    labels = unit.resolve(spec.label_folder)
    names = unit.resolve(spec.data_yaml) if spec.data_yaml else None
    doc = read_labels(spec.format, images, labels, spec.classes, names, roots)
    check_coco_document(doc, labels, num_classes)
    return CocoDataset(images, labels, doc, roots)


def category_map_for(unit: Unit, doc: dict) -> dict[int, int] | None:
    """Model label -> dataset category id: outputs.category_map, else for a decoded model on a
    YOLO dataset the dataset's own class indices (what a model trained on it outputs: label i
    is the data.yaml's names[i]), else None (the label is the id)."""
    from qbench.decode.spec import category_mapping

    outputs = unit.model.outputs
    mapping = category_mapping(outputs)
    if mapping is None and outputs is not None and outputs.decoder and "yolo_names" in doc:
        ids = {c["name"]: int(c["id"]) for c in doc["categories"]}
        mapping = {i: ids[n] for i, n in enumerate(doc["yolo_names"]) if n in ids}
    return mapping


class UnitData:
    """A unit's dataset, read once per unit at the model's input size with the unit's resolved
    preprocessing: the calibration split, the evaluation set and the calibration split's mAP."""

    def __init__(self, unit: Unit, loaded: LoadedModel, pre: PreprocessSpec) -> None:
        self.unit, self.loaded, self.pre = unit, loaded, pre
        self._read_once = None

    def _dataset(self):
        if self._read_once is None:
            unit, loaded = self.unit, self.loaded
            decoded = unit.model.outputs is not None and unit.model.outputs.decoder is not None
            formats = loaded.kind.dataset_formats + (("coco",) if decoded else ())
            if ("coco" if unit.dataset.format in BOX_FORMATS else unit.dataset.format) not in formats:
                raise DatasetError(f"{unit.dataset.annotations}: a COCO detection dataset needs a "
                                   "detector (an ONNX file needs outputs.decoder)")
            self._read_once = _load(unit, loaded.num_classes, tuple(loaded.input_size), self.pre,
                                    loaded.kind.labels_are_category_ids)
        return self._read_once

    def _coco_images(self, data, ids: list[int]):
        return _read([data.image_path(i) for i in ids], self.pre, tuple(self.loaded.input_size))

    def calibration_batches(self) -> list[torch.Tensor]:
        data, calib_ids, _ = self._dataset()
        if self.unit.dataset.format in BOX_FORMATS:
            images, _ = self._coco_images(data, calib_ids)
        else:
            images = data[0][calib_ids]
        return list(images.split(BATCH))

    @cached_property
    def evaluation_set(self) -> EvalSet:
        unit = self.unit
        data, _, eval_ids = self._dataset()
        if unit.dataset.format in BOX_FORMATS:
            images, geos = self._coco_images(data, eval_ids)
            return EvalSet(images, eval_ids, [(g.sx, g.sy) for g in geos], None, data.doc, geos,
                           category_map=category_map_for(unit, data.doc),
                           kitti_iou=kitti_thresholds(unit.dataset))
        batch, labels, geos, note = data
        return EvalSet(batch[eval_ids], eval_ids, [(geos[i].sx, geos[i].sy) for i in eval_ids],
                       labels[eval_ids] if labels is not None else None, None,
                       [geos[i] for i in eval_ids], None if labels is not None else note)

    def calibration_map_scorers(self, heldout_count: Callable[[int], int]):
        """mAP on the calibration split's annotations: what int8_mixed optimises (never eval),
        as (score on the searched images, score on the held-out ones or None). A model whose
        raw outputs need a decoder (outputs.decoder) is decoded and mapped back as in its
        evaluation."""
        from qbench.evaluate.coco import evaluate_detections, to_coco_results

        unit, loaded = self.unit, self.loaded
        data, calib_ids, _ = self._dataset()
        mapping = category_map_for(unit, data.doc)
        images, geos = self._coco_images(data, calib_ids)
        scales = [(g.sx, g.sy) for g in geos]
        spec = unit.model.outputs
        decoded = spec is not None and spec.decoder is not None

        def scorer(lo: int, hi: int):
            ids, part = calib_ids[lo:hi], images[lo:hi]

            def score(predict) -> float:
                if decoded:
                    from qbench.evaluate.decoded import decoded_predictions

                    dets = decoded_predictions(loaded, spec, predict, part)
                    results = to_coco_results(ids, dets, mapping=mapping, geometries=geos[lo:hi])
                else:
                    outs = [o for batch in part.split(BATCH) for o in predict(batch)]
                    results = to_coco_results(ids, outs, scales[lo:hi], mapping)
                return evaluate_detections(data.doc, results, ids)["map"]

            return score

        n, held = len(calib_ids), heldout_count(len(calib_ids))
        return scorer(0, n - held), (scorer(n - held, n) if held else None)
