"""Train the fixture Faster R-CNN on synthetic shapes (CPU) and ship its weights.

    nice -n 10 .venv/bin/python scripts/train_fixture.py

Training scenes are drawn on the fly from one seeded stream; the held-out scenes come from
a different seed, are written as a COCO dataset and scored with the same evaluation code
the benchmark uses. Writes worker/models/fixture_frcnn.pt (a plain state_dict) and
fixture_frcnn.json (seed, held-out mAP, size, latency) beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qbench.evaluate import coco, synth  # noqa: E402
from qbench.models import fixture  # noqa: E402


def held_out_map(model: torch.nn.Module, seed: int, images: int) -> dict[str, float]:
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        ann = synth.generate_dataset(tmp, seed, images, fixture.INPUT_SIZE)
        ds = coco.load_coco(Path(tmp) / "images", ann, fixture.NUM_CLASSES)
        preds = []
        for start in range(0, len(ds.image_ids), 8):
            ids = ds.image_ids[start:start + 8]
            batch, scales = coco.load_batch(ds, ids, fixture.INPUT_SIZE)
            with torch.inference_mode():
                preds += coco.to_coco_results(ids, model(list(batch)), scales)
        return coco.evaluate_detections(ann, preds)


def latency_ms(model: torch.nn.Module, runs: int = 20) -> float:
    x = [torch.rand(3, *fixture.INPUT_SIZE)]
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            t = time.perf_counter()
            model(x)
            if i >= 3:  # the first calls warm up allocator and kernels
                times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def batch(rng: np.random.Generator, n: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    imgs, targets = [], []
    for _ in range(n):
        img, boxes, labels = synth.render_scene(rng, fixture.INPUT_SIZE)
        imgs.append(torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0))
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)})
    return imgs, targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="training stream and init seed")
    ap.add_argument("--eval-seed", type=int, default=1000, help="held-out scenes (not the training seed)")
    ap.add_argument("--eval-images", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--out", type=Path, default=fixture.WEIGHTS)
    # One thread by default: on a shared 2-core box, two OpenMP threads stall badly whenever
    # another process holds a core.
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.eval_seed == args.seed:
        ap.error("--eval-seed must differ from --seed: the evaluation must be held out")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = fixture.build_fixture(pretrained=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = min(100, args.steps // 10)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0, running = time.time(), {}
    for step in range(1, args.steps + 1):
        losses = model(*batch(rng, args.batch))
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach()) / args.log_every
        if step % args.log_every == 0:
            parts = " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in running.items())
            print(f"step {step}/{args.steps} {time.time() - t0:.0f}s lr={sched.get_last_lr()[0]:.2e} {parts}", flush=True)
            running = {}
        if step % args.eval_every == 0 and step < args.steps:
            m = held_out_map(model, args.eval_seed, 48)
            print(f"  held-out (48 images) mAP={m['map']:.3f} mAP@.5={m['map50']:.3f}", flush=True)
            model.train()
    train_s = time.time() - t0

    model.eval()
    metrics = held_out_map(model, args.eval_seed, args.eval_images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    # Reload exactly as users will, so the recorded numbers belong to the shipped file.
    shipped = fixture.build_fixture(pretrained=False)
    shipped.load_state_dict(torch.load(args.out, map_location="cpu", weights_only=True))
    shipped.eval()
    record = {
        "classes": list(synth.CLASSES),
        "input_size": list(fixture.INPUT_SIZE),
        "train_seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "train_seconds": round(train_s, 1),
        "eval_seed": args.eval_seed,
        "eval_images": args.eval_images,
        "map": round(metrics["map"], 4),
        "map50": round(metrics["map50"], 4),
        "size_bytes": args.out.stat().st_size,
        "params": sum(p.numel() for p in shipped.parameters()),
        "latency_ms_cpu_bs1": round(latency_ms(shipped), 2),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
