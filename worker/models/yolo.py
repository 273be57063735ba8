"""`source: yolo`: ultralytics detection networks built from their bundled YAML.

ultralytics is AGPL-3.0: an optional extra (`pip install 'qbench[yolo]'`), imported only here,
only when a YOLO model is loaded. Nothing is downloaded: the network is built from the YAML
(random weights) and trained weights come from a state_dict checkpoint loaded with
weights_only=True. Ultralytics' own .pt files pickle whole objects, so they are refused: save
`model.state_dict()` from them first.

The benchmark times the network's forward on an NCHW batch (task "yolo": one tensor
[B, 4 + classes, anchors] of decoded boxes and class scores); letterbox pre-processing and NMS
are excluded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from qbench.models.base import LoadedModel
from qbench.models.kinds.yolo import YOLO
from qbench.models.torchvision_models import ModelError, load_checkpoint

EXTRA = "pip install 'qbench[yolo]'"
NOTES = ("YOLO network forward only (decoded boxes + class scores); letterbox pre-processing "
         "and NMS excluded from the timing")
_ARCH = re.compile(r"^[A-Za-z0-9_.-]+$")


class YoloNet(nn.Module):
    """The network with one tensor out: eval-mode Detect returns (y, raw maps) otherwise."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y


@dataclass
class YoloLoadedModel(LoadedModel):
    notes: str = NOTES  # added to every mode's notes (registry.quantize)


def fold_batchnorm(module: nn.Module) -> None:
    """Fold each ultralytics Conv's BatchNorm into its conv, as ultralytics' own fuse() does,
    but leave an Identity so the class forward (which FX traces) still works."""
    for sub in module.modules():
        conv, bn = getattr(sub, "conv", None), getattr(sub, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            sub.conv = fuse_conv_bn_eval(conv, bn)
            sub.bn = nn.Identity()


def build_yolo(arch: str, num_classes: int | None) -> nn.Module:
    # ultralytics probes DNS at import and sends usage events when online: never reach out
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics.nn.modules import Conv
        from ultralytics.nn.tasks import DetectionModel, guess_model_scale
    except ImportError:
        raise ModelError(f"source yolo needs the optional ultralytics package (AGPL-3.0): "
                         f"{EXTRA}") from None
    name = arch if arch.endswith((".yaml", ".yml")) else f"{arch}.yaml"
    if not _ARCH.match(name) or any(t in name for t in ("-cls", "-seg", "-pose", "-obb")):
        raise ModelError(f"arch {arch!r}: use a bundled ultralytics detection YAML such as "
                         "yolov8n.yaml or yolo11n.yaml (classify/segment/pose/obb variants are "
                         "not supported)")
    config = bundled_config(arch, name)
    config["scale"] = guess_model_scale(name)
    config["yaml_file"] = name
    # The config's `activation` would be eval'd by ultralytics: it is read here as a torch.nn
    # class with literal arguments and set the way ultralytics would, never evaluated.
    act = config.pop("activation", None)
    default_act = Conv.default_act
    try:
        if act is not None:
            Conv.default_act = safe_activation(arch, act)
        return DetectionModel(config, nc=num_classes or 80, verbose=False)
    except ModelError:
        raise
    except Exception as exc:  # a YAML that is not a detection network
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"arch {arch!r}: ultralytics cannot build it ({first[:200]})") from None
    finally:
        Conv.default_act = default_act


def bundled_config(arch: str, name: str) -> dict:
    """The model YAML of that name inside the installed ultralytics package, parsed as data.

    ultralytics itself looks in the working folder first: a yolov8n.yaml planted there would
    be built instead (and its strings evaluated). Only a regular file under the package's own
    cfg/models/ is read here.
    """
    import ultralytics

    from qbench.manifest import UniqueKeyLoader

    models = (Path(ultralytics.__file__).parent / "cfg" / "models").resolve()
    stem = Path(name).stem
    # as ultralytics reads them: yolov8n.yaml is yolov8.yaml at scale n
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", stem) + ".yaml"
    for wanted in dict.fromkeys((f"{stem}.yaml", unified)):
        found = [p for p in models.rglob(wanted)
                 if not p.is_symlink() and p.is_file() and models in p.resolve().parents]
        if len(found) == 1:
            try:
                config = yaml.load(found[0].read_text(), Loader=UniqueKeyLoader)  # safe: a SafeLoader
            except (OSError, yaml.YAMLError) as exc:
                raise ModelError(f"arch {arch!r}: {found[0]} cannot be read ({exc})") from None
            if not isinstance(config, dict):
                raise ModelError(f"arch {arch!r}: {found[0]} is not a model YAML")
            return config
    raise ModelError(f"arch {arch!r}: ultralytics cannot build it (no model YAML of that name "
                     "in the installed package)")


def safe_activation(arch: str, spec: object) -> nn.Module:
    """`nn.SiLU()` or `torch.nn.LeakyReLU(0.1)`: a torch.nn module class with literal arguments;
    anything else is refused."""
    import ast

    refused = ModelError(f"arch {arch!r}: its activation {str(spec)[:100]!r} is not a torch.nn "
                         "module with literal arguments")
    try:
        call = ast.parse(str(spec), mode="eval").body
        if not isinstance(call, ast.Call):
            raise refused
        parts = []
        node = call.func
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise refused
        parts.append(node.id)
        dotted = ".".join(reversed(parts))
        if dotted not in (f"nn.{parts[0]}", f"torch.nn.{parts[0]}"):
            raise refused
        cls = getattr(nn, parts[0], None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise refused
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        return cls(*args, **kwargs)
    except (SyntaxError, ValueError, TypeError, RecursionError):
        raise refused from None


def load_yolo(model_id: str, arch: str, num_classes: int | None, input_size: tuple[int, int],
              checkpoint: Path | None) -> LoadedModel:
    if any(s % 32 for s in input_size):
        raise ModelError(f"models[{model_id}].input_size: YOLO needs sides divisible by 32, "
                         f"got {input_size[0]}x{input_size[1]}")
    net = build_yolo(arch, num_classes)
    if checkpoint is not None:
        load_checkpoint(net, checkpoint)
    net.eval()
    fold_batchnorm(net)
    return YoloLoadedModel(
        model_id=model_id, arch=arch, task=YOLO.name, module=YoloNet(net).eval(),
        input_size=input_size, num_classes=num_classes or 80, trained=checkpoint is not None,
        source="yolo",
    )
