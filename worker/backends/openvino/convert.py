"""A loaded model as an OpenVINO model: an ONNX file read as is, a torch module converted.

`openvino.convert_model` cannot convert a torchvision detector's list-of-dicts output, so a
detector is converted through DetectorTensors: a fixed-size [1, 3, H, W] image in, tensors out
(boxes, labels, scores, and for a two-stage detector the number of proposals its box head
pooled: the work it did). NMS and RoIAlign convert to OpenVINO's own operators. Other torch
models (classifiers, YOLO networks) take a dynamic batch.

A converted model (or a read ONNX file) is saved as IR and read back: convert_model and the
ONNX reader share constants between the main graph and the bodies of If operators (the
torchvision detector's scripted batched_nms becomes one), and NNCF cannot build a graph of
such a body; a read IR has separate ones.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qbench.backends.onnxruntime.export import node_module
from qbench.backends.onnxruntime.runtime import InputInfo, input_info
from qbench.models.base import LoadedModel

DETECTION_OUTPUTS = ("boxes", "labels", "scores")
PROPOSALS = "proposals"  # the extra output of a two-stage detector's wrapper
_WRAPPED = "__module.detector."  # convert_model's name prefix of the wrapped detector's modules
_MODULE = "__module."  # ... and of a module converted directly


class DetectorTensors(nn.Module):
    """A torchvision detector on one image of a fixed size: tensors in and out.

    A two-stage detector is run step by step (transform, backbone, RPN, RoI heads,
    postprocess: GeneralizedRCNN.forward in eval mode) so the number of proposals fed to the
    box head can be returned beside the detections."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.two_stage = hasattr(detector, "rpn") and hasattr(detector, "roi_heads")

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        images = [batch[0]]
        if not self.two_stage:
            out = self.detector(images)[0]
            return tuple(out[k] for k in DETECTION_OUTPUTS)
        det = self.detector
        sizes = [(int(batch.shape[-2]), int(batch.shape[-1]))]
        transformed, _ = det.transform(images)
        features = det.backbone(transformed.tensors)
        if isinstance(features, torch.Tensor):
            features = {"0": features}
        proposals, _ = det.rpn(transformed, features)
        detections, _ = det.roi_heads(features, proposals, transformed.image_sizes)
        out = det.transform.postprocess(detections, transformed.image_sizes, sizes)[0]
        count = torch.tensor(proposals[0].shape[0], dtype=torch.int64)
        return (*(out[k] for k in DETECTION_OUTPUTS), count)


def onnx_node(op_name: str) -> str:
    """The ONNX node an operator was read from: OpenVINO splits a Conv/Gemm with a bias into
    "<node>/WithoutBiases" and an Add named "<node>"."""
    return op_name.removesuffix("/WithoutBiases")


def name_fused_convs(model: Any, onnx_path: Path) -> int:
    """Give each conv that convert_model folded with its BatchNorm its ONNX node's name back.

    The fusion names the folded conv after its new weight (Multiply_NNN) and leaves the
    BatchNorm's name on the Add of its bias; the rows, keep_float and the search name layers by
    ONNX node, so the conv feeding that BatchNorm in the file lends its name. Returns how many
    were renamed."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    conv_of_bn = {}
    for node in graph.node:
        source = producer.get(node.input[0]) if node.input else None
        if node.op_type == "BatchNormalization" and source is not None \
                and source.op_type == "Conv":
            conv_of_bn[node.name] = source.name
    renamed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        users = [i.get_node().get_friendly_name() for i in op.output(0).get_target_inputs()]
        names = [conv_of_bn[u] for u in users if u in conv_of_bn]
        if len(names) == 1:
            op.set_friendly_name(names[0])
            renamed += 1
    return renamed


@dataclass
class Converted:
    """An OpenVINO model of a loaded model and how to feed and name it."""

    model: Any  # openvino.Model
    output_names: list[str]  # in output order: the task's names (kind.ort_outputs reads them)
    info: InputInfo  # its one image input: batched, or one image at a time
    note: str
    from_torch: bool
    conv_of_norm: dict[str, str] = field(default_factory=dict)  # BatchNorm -> its conv

    def op_module(self, op: Any) -> str | None:
        """module_of the operator's name; for a conv folded with its BatchNorm at conversion
        (renamed "Multiply_N"), the conv of the BatchNorm its output feeds."""
        own = self.module_of(op.get_friendly_name())
        if own is not None or op.get_output_size() != 1:
            return own
        users = list(op.output(0).get_target_inputs())
        if len(users) != 1:
            return None
        norm = self.module_of(users[0].get_node().get_friendly_name())
        return self.conv_of_norm.get(norm or "", norm)

    def layer_name(self, op: Any) -> str:
        """How a weight layer is named in the rows: its torch module, else (an ONNX file) the
        ONNX node it was read from, as ort_int8 names it."""
        if self.from_torch:
            return self.op_module(op) or op.get_friendly_name()
        return onnx_node(op.get_friendly_name())

    def module_of(self, op_name: str) -> str | None:
        """The torch module (or, for an ONNX file, the dotted node scope) an operator came from."""
        if not self.from_torch:
            return node_module(onnx_node(op_name), None)
        prefix = _WRAPPED if self.info.per_image else _MODULE
        if not op_name.startswith(prefix):
            return None
        return op_name[len(prefix):].split("/", 1)[0] or None


def conv_of_norm(module: nn.Module) -> dict[str, str]:
    """Each BatchNorm (or FrozenBatchNorm2d) module and the conv registered just before it,
    the conv it normalises in torchvision's and ultralytics' blocks (conv, bn, activation)."""
    pairs: dict[str, str] = {}
    last_conv = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            last_conv = name
        elif "BatchNorm" in type(sub).__name__ and last_conv is not None:
            pairs[name] = last_conv
            last_conv = None
    return pairs


def convert(loaded: LoadedModel, work_dir: str | Path) -> Converted:
    """The OpenVINO model of `loaded`, kept as IR in work_dir and read back from it."""
    import openvino as ov

    converted = _convert(loaded)
    xml = Path(work_dir) / "openvino" / "model.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(converted.model, str(xml), compress_to_fp16=False)
    converted.model = ov.Core().read_model(str(xml))
    if converted.from_torch:
        converted.conv_of_norm = conv_of_norm(loaded.module)
    return converted


def from_ir(loaded: LoadedModel, xml: str | Path) -> Converted:
    """A model saved as IR (a unit's artifact) read back, fed and named as `convert` fed and
    named it: the ONNX file's own names and input, the detector wrapper's outputs (proposals
    when it has a fourth), else output0.. on a batched input."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    if loaded.onnx_path is not None:
        names = [o.get_any_name() if o.get_names() else f"output{i}"
                 for i, o in enumerate(model.outputs)]
        return Converted(model, names, input_info(loaded.onnx_path), "IR read back",
                         from_torch=False)
    if loaded.kind.onnx_per_image:
        proposals = [PROPOSALS] if len(model.outputs) > len(DETECTION_OUTPUTS) else []
        return Converted(model, [*DETECTION_OUTPUTS, *proposals], InputInfo("batch", True, True),
                         "IR read back", from_torch=True)
    return Converted(model, [f"output{i}" for i in range(len(model.outputs))],
                     InputInfo("input", False, True), "IR read back", from_torch=True)


def _convert(loaded: LoadedModel) -> Converted:
    import openvino as ov

    h, w = loaded.input_size
    if loaded.onnx_path is not None:
        # convert_model, not read_model: it runs OpenVINO's front-end fusions (BatchNorm into
        # its conv, hardswish's Add/Clip/Mul/Div into one HSwish), so NNCF quantizes the graph
        # the plugin runs. On read_model's raw graph NNCF also quantized every BatchNorm and
        # hardswish input per tensor (measured on the PP-PicoDet layout detector: 94 of each).
        model = ov.convert_model(str(loaded.onnx_path))
        name_fused_convs(model, Path(loaded.onnx_path))
        names = [o.get_any_name() if o.get_names() else f"output{i}"
                 for i, o in enumerate(model.outputs)]
        return Converted(model, names, input_info(loaded.onnx_path),
                         f"ONNX file {Path(loaded.onnx_path).name} converted by OpenVINO",
                         from_torch=False)
    module = loaded.module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python values in the detector
        if loaded.kind.onnx_per_image:
            wrapper = DetectorTensors(module).eval()
            model = ov.convert_model(wrapper, example_input=(torch.rand(1, 3, h, w),),
                                     input=[ov.PartialShape([1, 3, h, w])])
            names = [*DETECTION_OUTPUTS, *([PROPOSALS] if wrapper.two_stage else [])]
            return Converted(model, names, InputInfo("batch", True, True),
                             "converted by openvino.convert_model (the detector on one "
                             f"{h}x{w} image, tensors out)", from_torch=True)
        example = torch.rand(1, 3, h, w)
        # One call first: ultralytics' Detect computes its anchors and strides on the first
        # call at a new size and caches them, so a fresh module traces differently on its
        # first and second calls, and convert_model's trace check fails.
        module(example)
        model = ov.convert_model(module, example_input=(example,),
                                 input=[ov.PartialShape([-1, 3, h, w])])
    names = [f"output{i}" for i in range(len(model.outputs))]
    return Converted(model, names, InputInfo("input", False, True),
                     "converted by openvino.convert_model", from_torch=True)
