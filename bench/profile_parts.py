"""Where a torchvision Faster R-CNN spends its time: wall time per part, and the top ops.

Parts are timed with forward hooks, so the same code times fp32 and int8 (a quantized part is
still a module under the same name). "rpn other" is anchors, decoding and NMS; "roi other" is
box decoding, score filtering and NMS; "rest" is everything outside the timed modules (the
transform's postprocess that maps boxes back, Python glue).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

PARTS = ("transform", "backbone", "rpn", "rpn.head", "roi_heads", "roi_heads.box_roi_pool",
         "roi_heads.box_head", "roi_heads.box_predictor")


@contextmanager
def part_timer(model: nn.Module):
    """Yields a dict part -> seconds accumulated while the context is open."""
    totals = dict.fromkeys(PARTS, 0.0)
    starts: dict[str, float] = {}
    hooks = []
    for name in PARTS:
        try:
            sub = model.get_submodule(name)
        except AttributeError:
            continue

        def pre(_m, _a, name=name):
            starts[name] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            totals[name] += time.perf_counter() - starts[name]

        hooks += [sub.register_forward_pre_hook(pre), sub.register_forward_hook(post)]
    try:
        yield totals
    finally:
        for h in hooks:
            h.remove()


def profile_parts(model: nn.Module, fn: Callable[[], object], iterations: int) -> dict[str, float]:
    """Median-free mean ms per call of each part over `iterations` calls of fn."""
    with part_timer(model) as totals:
        t = time.perf_counter()
        for _ in range(iterations):
            fn()
        total = time.perf_counter() - t
    ms = {k: 1000 * v / iterations for k, v in totals.items()}
    out = {
        "transform": ms["transform"],
        "backbone + FPN": ms["backbone"],
        "rpn head": ms["rpn.head"],
        "rpn other": ms["rpn"] - ms["rpn.head"],
        "RoIAlign": ms["roi_heads.box_roi_pool"],
        "box head": ms["roi_heads.box_head"],
        "box predictor": ms["roi_heads.box_predictor"],
        "roi other": ms["roi_heads"] - ms["roi_heads.box_roi_pool"] - ms["roi_heads.box_head"]
        - ms["roi_heads.box_predictor"],
    }
    out["rest"] = 1000 * total / iterations - sum(out.values())
    out["total"] = 1000 * total / iterations
    return out


def op_table(fn: Callable[[], object], rows: int = 25) -> str:
    """torch.profiler's table of the ops that took the most self CPU time in one call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def print_parts(results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    print("part".ljust(16) + "".join(f"{n + ' ms':>16}" for n in names))
    for part in next(iter(results.values())):
        print(part.ljust(16) + "".join(f"{results[n][part]:16.1f}" for n in names))


def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return fn()
    return run
