"""Faster R-CNN R50-FPN: fp32 eager vs int8_static vs fp32 compiled vs ORT and OpenVINO, one run.

Random weights (no downloads here): the latencies are real, the detections are not. BatchNorm
statistics are first set from a few synthetic images so that features neither vanish nor blow
up; int8 is checked against fp32 on the backbone features (cosine), since random-weight
detections cannot be compared. The variants are timed round-robin, one call each in turn, so a
load spike from other work on the machine hits all of them alike.

ORT runs the same detector exported to ONNX, one image per session call (see
worker/quantize/ort_fp32.py). OpenVINO runs it converted through qbench's wrapper (one
fixed-size image in, tensors out), ov_fp32 with f32 forced and ov_int8 by NNCF with the
detector's post-processing kept float; the proposals each variant's box head pooled per image
are printed beside its detections, since a variant that pools fewer RoIs is faster by doing
less. --profile adds wall time per part (backbone + FPN, RPN, RoIAlign,
box head...) for fp32 and int8, and torch.profiler's top ops of int8: what still runs in float.

    .venv/bin/python bench/bench_frcnn.py --size 512 --batch-sizes 1,4 --iterations 5
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qbench.manifest import CalibrationSpec  # noqa: E402
from qbench.measure.latency import Latency  # noqa: E402
from qbench.models.base import LoadedModel, run_task  # noqa: E402
from qbench.quantize.common import serialized_size_bytes  # noqa: E402
from qbench.quantize.registry import QuantizeRequest, quantize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_parts import op_table, print_parts, profile_parts  # noqa: E402

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def images(n: int, size: int, seed: int) -> torch.Tensor:
    """Synthetic scenes from qbench.evaluate.synth, else seeded smooth fields with rectangles."""
    try:
        from qbench.evaluate.synth import synth_images
        return synth_images(n, (size, size), seed)
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        out = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(size, size),
                            mode="bicubic", align_corners=False)
        for i in range(n):
            for _ in range(4):
                y, x, h, w = (torch.randint(0, size // 2, (4,), generator=g) + 8).tolist()
                out[i, :, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g)
        return out.clamp(0, 1)


def to_frozen_bn(module: nn.Module) -> None:
    """BatchNorm2d -> FrozenBatchNorm2d, as torchvision builds a pretrained detector."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            to_frozen_bn(child)


def build(size: int, frozen_bn: bool) -> nn.Module:
    torch.manual_seed(0)
    # min_size = max_size = size: the detector runs at the given size, not resized to 800.
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size)
    model.eval()
    batch = model.transform(list(images(4, size, seed=100)))[0].tensors
    for m in model.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the few batches
    model.backbone.train()
    with torch.no_grad():
        model.backbone(batch)
    model.eval()
    if frozen_bn:
        to_frozen_bn(model)
    return model


def backbone_cosine(fp32: nn.Module, other: nn.Module, size: int, noise: float = 0.0) -> float:
    """Worst FPN level's cosine of other's features vs fp32's (with `noise`: fp32 against
    itself on inputs with that relative Gaussian noise, the scale for a random net's chaos)."""
    x = fp32.transform(list(images(2, size, seed=200)))[0].tensors
    with torch.no_grad():
        ref = fp32.backbone(x)
        out = other.backbone(x + noise * x.std() * torch.randn_like(x))
    return min(F.cosine_similarity(out[k].flatten(1), ref[k].flatten(1)).mean().item()
               for k in ref)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--calib-images", type=int, default=8)
    p.add_argument("--method", default="histogram", choices=["minmax", "histogram", "percentile"])
    p.add_argument("--no-frozen-bn", dest="frozen_bn", action="store_false",
                   help="plain BatchNorm2d instead of FrozenBatchNorm2d (trained detectors' kind)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime columns")
    p.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO columns")
    p.add_argument("--fp32-fast-roi", action="store_true",
                   help="add fp32 with int8_static's RoIAlign, to show what that change alone gives")
    p.add_argument("--fp32-per-image", action="store_true",
                   help="add fp32 run image by image, as int8_static runs a large detector")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="time parts of fp32 and int8 over N calls at batch 1, and list int8's ops")
    return p.parse_args()


def variants(args, fp32: nn.Module, loaded: LoadedModel, request: QuantizeRequest, q) -> dict:
    out = {"fp32": lambda b: run_task("detection", fp32, b), "int8": q.predict}
    if not args.no_compile:
        log("      fp32 with torch.compile(backbone): compiles during warm-up")
        compiled = copy.deepcopy(fp32)
        compiled.backbone = torch.compile(compiled.backbone)
        out["fp32_compiled"] = lambda b: run_task("detection", compiled, b)
    if args.fp32_fast_roi:
        from qbench.quantize.fast_roi_align import install_fast_roi_pool

        fast = copy.deepcopy(fp32)
        install_fast_roi_pool(fast)
        out["fp32_fast_roi"] = lambda b: run_task("detection", fast, b)
    if args.fp32_per_image:
        out["fp32_per_image"] = lambda b: [d for i in b.split(1) for d in run_task("detection", fp32, i)]
    if not args.no_ort:
        for mode in ("ort_fp32", "ort_int8"):
            t = time.perf_counter()
            o = quantize(loaded, mode, request)
            log(f"      {mode}: ready in {time.perf_counter() - t:.1f}s, "
                f"{o.size_bytes / 1e6:.1f} MB")
            out[mode] = o.predict
    if not args.no_openvino:
        for mode in ("ov_fp32", "ov_int8"):
            t = time.perf_counter()
            o = quantize(loaded, mode, request)
            log(f"      {mode}: ready in {time.perf_counter() - t:.1f}s, "
                f"{o.size_bytes / 1e6:.1f} MB, ran {o.runtime.executed_precision()}")
            out[mode] = o.predict
            WORK[mode] = o
    return out


WORK: dict = {}  # variant -> its Quantized, where the proposals per image can be read


def time_round_robin(fns: dict, batch: torch.Tensor, args) -> tuple[dict, dict]:
    bs = batch.shape[0]
    for name, fn in fns.items():
        t = time.perf_counter()
        for _ in range(args.warmup):
            fn(batch)
        log(f"      bs{bs} {name}: warm-up {time.perf_counter() - t:.1f}s")
    times: dict[str, list[float]] = {name: [] for name in fns}
    dets: dict[str, float] = {}
    for i in range(args.iterations):
        for name, fn in fns.items():
            t = time.perf_counter()
            out = fn(batch)
            times[name].append(time.perf_counter() - t)
            dets[name] = sum(len(d["boxes"]) for d in out) / bs
        log(f"      bs{bs} iteration {i + 1}/{args.iterations}: " + ", ".join(
            f"{n} {times[n][-1] * 1000:.0f} ms" for n in fns))
    stats = {n: Latency.from_seconds(v) for n, v in times.items()}
    return {n: (lat.p50_ms, lat.min_ms) for n, lat in stats.items()}, dets


def print_table(rows: list, cols: list[str]) -> None:
    """Medians, then minimums: on a shared machine the fastest call is the least disturbed."""
    ratios = [c for c in ("fp32_per_image", "fp32_compiled", "ort_int8", "ov_fp32", "ov_int8")
              if c in cols]
    for which, label in ((0, "median"), (1, "min")):
        print(f"{label:<7}" + "".join(f"{c + ' ms':>19}" for c in cols) + f"{'int8 vs fp32':>14}"
              + "".join(f"{'vs ' + c:>20}" for c in ratios))
        for bs, stats, _ in rows:
            ms = {c: stats[c][which] for c in cols}
            line = f"bs{bs:<5}" + "".join(f"{ms[c]:19.1f}" for c in cols)
            line += f"{ms['fp32'] / ms['int8']:13.2f}x"
            print(line + "".join(f"{ms[c] / ms['int8']:19.2f}x" for c in ratios))
    for bs, _, dets in rows:
        print(f"bs{bs} detections/img: " + ", ".join(f"{c} {dets[c]:.0f}" for c in cols))


def profile(args, fp32: nn.Module, q) -> None:
    x = images(1, args.size, seed=11)
    runs = {"fp32": (fp32, lambda: run_task("detection", fp32, x)),
            "int8": (q.module, lambda: run_task("detection", q.module, x))}
    acc: dict[str, list[dict[str, float]]] = {n: [] for n in runs}
    for _ in range(args.profile):  # alternating, so load changes hit both alike
        for name, (module, fn) in runs.items():
            acc[name].append(profile_parts(module, fn, 1))
    mean = {n: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for n, rs in acc.items()}
    print(f"\nper part at batch 1, mean of {args.profile} calls (ms):")
    print_parts(mean)
    print("\nint8 at batch 1, top ops by self CPU time (quantized::* run int8, the rest float):")
    print(op_table(runs["int8"][1]))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    log(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"threads {torch.get_num_threads()}, input {args.size}x{args.size}, batch sizes {sizes}, "
        f"load average {' '.join(load)}")

    log("[1/4] build fasterrcnn_resnet50_fpn (random weights, BN statistics from 4 images"
        + (", FrozenBatchNorm2d)" if args.frozen_bn else ")"))
    fp32 = build(args.size, args.frozen_bn)
    loaded = LoadedModel("frcnn_r50", "fasterrcnn_resnet50_fpn", "detection", fp32,
                         (args.size, args.size), 91)

    log(f"[2/4] int8_static: calibrate on {args.calib_images} images ({args.method})")
    calib = images(args.calib_images, args.size, seed=1)
    spec = CalibrationSpec(images=args.calib_images, method=args.method, per_channel=True)
    with tempfile.TemporaryDirectory(prefix="bench-frcnn-") as work:
        request = QuantizeRequest("cpu", spec, [], lambda: calib.split(2), work)
        t = time.perf_counter()
        q = quantize(loaded, "int8_static", request)
        log(f"      quantized in {time.perf_counter() - t:.1f}s: {len(q.int8_modules)} int8 "
            f"layers, {len(q.float_modules)} float")
        log(f"      worst FPN level cosine: int8 vs fp32 "
            f"{backbone_cosine(fp32, q.module, args.size):.4f}; fp32 vs fp32 on 1% input noise "
            f"{backbone_cosine(fp32, fp32, args.size, 0.01):.4f} (random weights amplify any "
            "perturbation)")
        log("[3/4] other variants")
        WORK["fp32"] = quantize(loaded, "fp32", request)
        WORK["int8"] = q
        fns = variants(args, fp32, loaded, request, q)
        log("[4/4] latency, variants timed round-robin")
        rows = []
        for bs in sizes:
            med, dets = time_round_robin(fns, images(bs, args.size, seed=10 + bs), args)
            rows.append((bs, med, dets))
    fp32_mb, int8_mb = serialized_size_bytes(fp32) / 1e6, q.size_bytes / 1e6
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"\nsize: fp32 {fp32_mb:.1f} MB, int8 {int8_mb:.1f} MB, "
          f"reduction {100 * (1 - int8_mb / fp32_mb):.1f}%; load average now {' '.join(load)}")
    print_table(rows, list(fns))
    x = images(2, args.size, seed=12)
    print("proposals into the box head per image (the work done): " + ", ".join(
        f"{name} {sum(n) / len(n):.0f}" for name, o in WORK.items()
        if (n := o.runtime.proposals_per_image(o.predict, x))))
    print(f"{args.iterations} iterations after {args.warmup} warm-up; "
          f"int8 notes: {q.notes}")
    if args.profile:
        profile(args, fp32, q)


if __name__ == "__main__":
    main()
