"""A small trained Faster R-CNN for the synthetic shapes (qbench.evaluate.synth).

It gives tests and demos a detector with real accuracy without downloading anything.
The trunk uses plain Conv2d + BatchNorm2d + ReLU modules (no FrozenBN, no functional
activations) so eager, FX and pt2e int8 quantizers can fuse and quantize it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from qbench.evaluate.synth import CLASSES

WEIGHTS = Path(__file__).with_name("fixture_frcnn.pt")
INPUT_SIZE = (256, 256)  # (h, w)
NUM_CLASSES = len(CLASSES) + 1  # + background
FPN_CHANNELS = 64


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Trunk(nn.Module):
    """Five conv stages; layer1..layer4 output strides 4, 8, 16, 32."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 16, 2), _cbr(16, 32, 2))
        self.layer1 = nn.Sequential(_cbr(32, 32), _cbr(32, 32))
        self.layer2 = nn.Sequential(_cbr(32, 64, 2), _cbr(64, 64))
        self.layer3 = nn.Sequential(_cbr(64, 128, 2), _cbr(128, 128))
        self.layer4 = nn.Sequential(_cbr(128, 128, 2), _cbr(128, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def build_fixture(pretrained: bool = True) -> nn.Module:
    """The fixture detector in eval mode; with pretrained=True it carries the shipped weights."""
    backbone = BackboneWithFPN(
        Trunk(),
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[32, 64, 128, 128],
        out_channels=FPN_CHANNELS,
    )
    # One anchor size per FPN level ('0','1','2','3','pool'); objects are 12..115 px.
    anchors = AnchorGenerator(
        sizes=((12,), (24,), (48,), (96,), (192,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5
    )
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    rep = 256  # a slim box head keeps the weights small and inference fast
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=min(INPUT_SIZE),
        max_size=max(INPUT_SIZE),  # equal to the input: the transform never rescales
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, NUM_CLASSES),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=128,
        box_detections_per_img=50,
    )
    if pretrained:
        if not WEIGHTS.is_file():
            raise FileNotFoundError(f"fixture weights missing: {WEIGHTS} (run scripts/train_fixture.py)")
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
