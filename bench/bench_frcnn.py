"""Faster R-CNN R50-FPN: fp32 eager vs int8_static (vs fp32 with a compiled backbone), one run.

Random weights (no downloads here): the latencies are real, the detections are not. BatchNorm
statistics are first set from a few synthetic images so that features neither vanish nor blow
up; int8 is checked against fp32 on the backbone features (cosine), since random-weight
detections cannot be compared. The variants are timed round-robin, one call each in turn, so a
load spike from other work on the machine hits all of them alike.

    .venv/bin/python bench/bench_frcnn.py --size 512 --batch-sizes 1,4 --iterations 5
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.manifest import CalibrationSpec  # noqa: E402
from worker.measure.latency import Latency  # noqa: E402
from worker.models.base import LoadedModel, run_task  # noqa: E402
from worker.quantize.common import serialized_size_bytes  # noqa: E402
from worker.quantize.registry import QuantizeRequest, quantize  # noqa: E402

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def images(n: int, size: int, seed: int) -> torch.Tensor:
    """Synthetic scenes from worker.evaluate.synth, else seeded smooth fields with rectangles."""
    try:
        from worker.evaluate.synth import synth_images
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--batch-sizes", default="1,2,4")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--calib-images", type=int, default=8)
    p.add_argument("--method", default="histogram", choices=["minmax", "histogram", "percentile"])
    p.add_argument("--frozen-bn", action="store_true",
                   help="FrozenBatchNorm2d in fp32, as in torchvision's pretrained detectors")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    log(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"threads {torch.get_num_threads()}, input {args.size}x{args.size}, batch sizes {sizes}")

    log("[1/4] build fasterrcnn_resnet50_fpn (random weights, BN statistics from 4 images)")
    fp32 = build(args.size, args.frozen_bn)
    loaded = LoadedModel("frcnn_r50", "fasterrcnn_resnet50_fpn", "detection", fp32,
                         (args.size, args.size), 91)

    log(f"[2/4] int8_static: calibrate on {args.calib_images} images ({args.method})")
    calib = images(args.calib_images, args.size, seed=1)
    spec = CalibrationSpec(images=args.calib_images, method=args.method, per_channel=True)
    request = QuantizeRequest("cpu", spec, [], lambda: calib.split(2), "/tmp")
    t = time.perf_counter()
    q = quantize(loaded, "int8_static", request)
    log(f"      quantized in {time.perf_counter() - t:.1f}s: {len(q.int8_modules)} int8 layers, "
        f"{len(q.float_modules)} float")
    log(f"      worst FPN level cosine: int8 vs fp32 {backbone_cosine(fp32, q.module, args.size):.4f}"
        f"; fp32 vs fp32 on 1% input noise {backbone_cosine(fp32, fp32, args.size, 0.01):.4f}"
        " (random weights amplify any perturbation)")

    variants = {"fp32": lambda b: run_task("detection", fp32, b), "int8": q.predict}
    if not args.no_compile:
        log("[3/4] fp32 with torch.compile(backbone) (compiles during warm-up)")
        compiled = copy.deepcopy(fp32)
        compiled.backbone = torch.compile(compiled.backbone)
        variants["fp32_compiled"] = lambda b: run_task("detection", compiled, b)
    else:
        log("[3/4] torch.compile column skipped")

    fp32_mb, int8_mb = serialized_size_bytes(fp32) / 1e6, q.size_bytes / 1e6
    log("[4/4] latency, variants timed round-robin")
    rows = []
    for bs in sizes:
        batch = images(bs, args.size, seed=10 + bs)
        for name, fn in variants.items():
            t = time.perf_counter()
            for _ in range(args.warmup):
                fn(batch)
            log(f"      bs{bs} {name}: warm-up {time.perf_counter() - t:.1f}s")
        times: dict[str, list[float]] = {name: [] for name in variants}
        dets: dict[str, float] = {}
        for i in range(args.iterations):
            for name, fn in variants.items():
                t = time.perf_counter()
                out = fn(batch)
                times[name].append(time.perf_counter() - t)
                dets[name] = sum(len(d["boxes"]) for d in out) / bs
            log(f"      bs{bs} iteration {i + 1}/{args.iterations}: " + ", ".join(
                f"{n} {times[n][-1] * 1000:.0f} ms" for n in variants))
        med = {n: Latency.from_seconds(v).p50_ms for n, v in times.items()}
        rows.append((bs, med, dets))

    print()
    print(f"size: fp32 {fp32_mb:.1f} MB, int8 {int8_mb:.1f} MB, "
          f"reduction {100 * (1 - int8_mb / fp32_mb):.1f}%")
    cols = list(variants)
    print("bs  " + "".join(f"{c + ' ms':>18}" for c in cols) + f"{'int8 speedup':>14}"
          + (f"{'vs compiled':>13}" if "fp32_compiled" in cols else "") + "  detections/img")
    for bs, med, dets in rows:
        line = f"{bs:<4}" + "".join(f"{med[c]:18.1f}" for c in cols)
        line += f"{med['fp32'] / med['int8']:13.2f}x"
        if "fp32_compiled" in cols:
            line += f"{med['fp32_compiled'] / med['int8']:12.2f}x"
        print(line + "  " + ", ".join(f"{c} {dets[c]:.0f}" for c in cols))
    print(f"medians of {args.iterations} iterations after {args.warmup} warm-up; "
          f"int8 float parts: {q.notes}")


if __name__ == "__main__":
    main()
