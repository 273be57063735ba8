"""The preprocess block: validation, geometry (letterbox and its inverse), values, defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qbench.manifest import ManifestError, parse_manifest
from qbench.preprocess.defaults import for_model, torchvision_classifier_spec
from qbench.preprocess.spec import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from qbench.preprocess.transform import fit, load_image, to_values, unit_to_input


def _manifest(model_extra: str) -> str:
    return f"name: p\nmodels: [{{id: a, arch: resnet18, {model_extra}}}]\n"


@pytest.mark.parametrize("extra, needle", [
    ("preprocess: {mean: [0.5, 0.5]}", "models[0].preprocess.mean: needs 3 values"),
    ("preprocess: {std: [1, 0, 1]}", "models[0].preprocess.std: every std value must be positive"),
    ("preprocess: {resize: squash}", "models[0].preprocess.resize"),
    ("preprocess: {channels: rgba}", "models[0].preprocess.channels"),
    ("outputs: {decoder: yolox}", "models[0].outputs.decoder"),
    ("outputs: {category_map: coco80}", "models[0]: outputs.category_map needs a decoder"),
])
def test_bad_blocks_are_one_line_naming_the_field(extra, needle):
    with pytest.raises(ManifestError) as err:
        parse_manifest(_manifest(extra))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_letterbox_pads_and_maps_boxes_back():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    spec = PreprocessSpec(resize="letterbox", pad_value=114)
    out, geo = fit(image, spec, (64, 64))
    arr = np.array(out)
    assert arr.shape == (64, 64, 3)
    assert (arr[:16] == 114).all() and (arr[48:] == 114).all()  # 200x100 -> 64x32, centred
    assert (arr[20:44, :, 0] == 255).all()
    box = torch.tensor([[10.0, 20.0, 110.0, 80.0]])  # in the original image
    assert torch.allclose(geo.to_original(geo.to_input(box)), box, atol=1e-4)
    assert torch.allclose(geo.to_input(box), torch.tensor([[3.2, 22.4, 35.2, 41.6]]), atol=1e-4)


def test_shorter_side_crop_matches_torchvision_weights_transform(tmp_path):
    from torchvision.models import MobileNet_V2_Weights

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    spec = torchvision_classifier_spec("mobilenet_v2")
    ours, _ = load_image(tmp_path / "a.png", spec, (224, 224))
    theirs = MobileNet_V2_Weights.DEFAULT.transforms()(Image.open(tmp_path / "a.png"))
    assert ours.shape == theirs.shape == (3, 224, 224)
    # PIL vs tensor antialiased resize differ by a few grey levels at most
    assert (ours - theirs).abs().mean() < 0.05


def test_values_mean_std_scale_and_bgr():
    pixels = np.array([[[255, 0, 51]]], dtype=np.uint8)  # one RGB pixel
    spec = PreprocessSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD, channels="bgr")
    x = to_values(pixels, spec)
    rgb = (torch.tensor([1.0, 0.0, 0.2]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[:, 0, 0], rgb.flip(0), atol=1e-5)
    batch = torch.rand(2, 3, 4, 4)
    assert unit_to_input(batch, PreprocessSpec()) is batch  # [0, 1] RGB stays bit for bit
    assert torch.allclose(unit_to_input(batch, PreprocessSpec(scale=1.0)), batch * 255)


def _defaults(task: str, arch: str):
    from types import SimpleNamespace

    from qbench.models.kinds import kind_named

    return for_model(None, SimpleNamespace(kind=kind_named(task), arch=arch))


def test_defaults_per_source():
    cls = _defaults("classification", "mobilenet_v2")
    assert cls.spec.resize == "shorter_side_crop" and cls.spec.mean == IMAGENET_MEAN
    assert cls.spec.crop_ratio == pytest.approx(224 / 232) and cls.trusted
    det = _defaults("detection", "fixture")
    assert det.spec == PreprocessSpec() and det.trusted
    yolo = _defaults("yolo", "yolov8n")
    assert yolo.spec.resize == "letterbox" and yolo.spec.pad_value == 114
    onnx = _defaults("onnx", "m.onnx")
    assert not onnx.trusted and '"origin"' in onnx.to_json()
    mine = PreprocessSpec(mean=(0.1, 0.2, 0.3))
    assert for_model(mine, None).spec is mine
