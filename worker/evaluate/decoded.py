"""Accuracy and agreement of models whose raw outputs need a decoder (YOLO, ONNX files).

With `outputs.decoder`, fp32's and the candidate's outputs are decoded alike and scored as the
torchvision detectors are (agreement, count error, pycocotools mAP through the preprocessing's
inverse geometry and the category map). Without one, agreement is measured on the raw output
tensors (SQNR and cosine), named as such in `agreement_basis`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from qbench.decode.coco_results import check_categories
from qbench.decode.decoders import decode
from qbench.evaluate.class_metrics import detector_accuracy
from qbench.evaluate.coco import to_coco_results
from qbench.evaluate.evalset import BATCH, EvalSet
from qbench.evaluate.scores import detection_agreement_columns, top1_agreement_columns
from qbench.inspect.metrics import sqnr_db
from qbench.models.kinds.onnx import logits_of
from qbench.preprocess.defaults import UNDECLARED, Resolved


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach().float().cpu()]
    return [torch.as_tensor(o).detach().float().cpu() for o in out]


def output_agreement(ref: list[list[torch.Tensor]], cand: list[list[torch.Tensor]]) -> dict[str, Any]:
    """SQNR (dB) over every output element, and mean per-image cosine of the flattened outputs."""
    signal = noise = 0.0
    cosines = []
    for r_parts, c_parts in zip(ref, cand, strict=True):
        r = torch.cat([t.flatten(1) if t.dim() > 1 else t[None] for t in r_parts], 1)
        c = torch.cat([t.flatten(1) if t.dim() > 1 else t[None] for t in c_parts], 1)
        signal += float((r.double() ** 2).sum())
        noise += float(((r.double() - c.double()) ** 2).sum())
        cosines += torch.nn.functional.cosine_similarity(r, c, dim=1).tolist()
    sqnr = sqnr_db(signal, noise)
    return {"output_sqnr_db": sqnr if math.isfinite(sqnr) else None,
            "output_cosine": sum(cosines) / len(cosines) if cosines else None,
            "agreement_basis": "raw outputs (no outputs.decoder): SQNR and cosine"}


def _output_names(loaded) -> list[str] | None:
    if loaded.onnx_path is None:
        return None
    from qbench.decode.layout import onnx_output_shapes

    return [n for n, _ in onnx_output_shapes(loaded.onnx_path)]


def _step(spec) -> int:
    # a torchvision-layout file returns one image's detections: feed it image by image
    return 1 if spec is not None and spec.decoder == "torchvision" else BATCH


def decoded_predictions(loaded, spec, predict, images: torch.Tensor) -> list:
    """`predict`'s raw outputs on `images`, decoded by the manifest's outputs block."""
    names, size = _output_names(loaded), tuple(loaded.input_size)
    return [d for batch in images.split(_step(spec))
            for d in decode(_tensors(predict(batch)), spec, size, names)]


def _logits_accuracy(unit, pre, logits: torch.Tensor, data: EvalSet) -> dict[str, Any]:
    """top-1/top-5 of a given ONNX classifier: only with its preprocessing declared and an
    image folder whose class folders map to its outputs (`outputs.labels`)."""
    from qbench.evaluate.coco import topk_accuracy
    from qbench.evaluate.scores import wilson_columns

    if not pre.trusted:
        return {"accuracy_note": UNDECLARED}
    if data.labels is None:
        return {"accuracy_note": data.labels_note or "no labels: agreement with fp32 only"}
    acc = topk_accuracy(logits, data.labels, ks=(1, 5))
    return {"top1": acc["top1"], "top5": acc["top5"], "accuracy_note": None,
            **wilson_columns("top1", acc["top1"], logits.shape[0])}


def evaluate_decoded(unit, loaded, reference, candidate, data: EvalSet, device: str,
                     pre: Resolved) -> dict[str, Any]:
    """Columns of the models row for a YOLO or ONNX model (see the module docstring); `pre`:
    the unit's preprocessing, resolved once."""
    spec = unit.model.outputs
    names = _output_names(loaded)
    step = _step(spec)
    ref_raw, cand_raw = [], []
    for batch in data.images.split(step):
        ref_raw.append(_tensors(reference(batch)))
        cand_raw.append(_tensors(candidate(batch.to(device))))
    if spec is None or spec.decoder is None:
        row = {**output_agreement(ref_raw, cand_raw),
               "accuracy_note": "no outputs.decoder: no accuracy, agreement on raw outputs"}
        if all(logits_of(p) is not None for p in ref_raw):  # one [B, C] output: logits
            ref, ours = torch.cat([p[0] for p in ref_raw]), torch.cat([p[0] for p in cand_raw])
            row.update(top1_agreement_columns(ref, ours), logits_sqnr_db=row["output_sqnr_db"])
            row.update(_logits_accuracy(unit, pre, ours, data))
        return row
    size = tuple(loaded.input_size)
    fp32 = [d for parts in ref_raw for d in decode(parts, spec, size, names)]
    quant = [d for parts in cand_raw for d in decode(parts, spec, size, names)]
    row: dict[str, Any] = {"agreement_basis": f"decoded detections ({spec.decoder})",
                           **detection_agreement_columns(fp32, quant)}
    trained = loaded.trained or loaded.source == "onnx"  # a given ONNX file is what it is
    if not pre.trusted:
        row["accuracy_note"] = UNDECLARED
    elif not trained:
        row["accuracy_note"] = "random weights: no accuracy"
    elif data.gt is None:
        row["accuracy_note"] = "no annotations: agreement with fp32 only"
    else:
        mapping = data.category_map  # outputs.category_map, or a YOLO dataset's indices
        check_categories({int(c["id"]) for c in data.gt["categories"]}, mapping,
                         loaded.num_classes or None, f"models[{unit.model.id}].outputs.category_map")
        row.update(detector_accuracy(
            data, to_coco_results(data.image_ids, fp32, mapping=mapping, geometries=data.geometries),
            to_coco_results(data.image_ids, quant, mapping=mapping, geometries=data.geometries)))
    return row
