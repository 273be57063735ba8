"""'How this was measured', generated from the rows, so the text cannot drift from the run."""

from __future__ import annotations

from qbench.phases import LABELS, job_time_by_phase
from qbench.report.blocks import Bullets


def sampling_notes(latency: list[dict]) -> list[str]:
    """How many samples, how stable, and how the paired speedups were taken (new columns:
    rows written before they existed have none, and get no sentence)."""
    from qbench.measure.stats import BOOTSTRAP_RESAMPLES, STABLE_CV

    items = []
    plans = sorted({(r.get("min_seconds"), r.get("max_iterations"), r.get("max_seconds"))
                    for r in latency if r.get("iterations_run") is not None}, key=str)
    for min_s, max_i, max_s in plans:
        caps = ", ".join(x for x in (f"at most {max_i} iterations" if max_i else "",
                                     f"at most {max_s:g} s" if max_s else "") if x)
        items.append(f"Samples: at least the iterations above and {min_s or 0:g} s of measured "
                     f"time per batch size{'; ' + caps if caps else ''} (a cap wins). A row is "
                     f"stable when its coefficient of variation is at most {100 * STABLE_CV:.0f}%;"
                     " load is the highest 1-minute load average and the most runnable tasks of "
                     "other processes sampled between iterations.")
    refs = sorted({r["reference_mode"] for r in latency
                   if r.get("speedup") is not None and r.get("reference_mode")})
    side = [r for r in latency if r.get("pairing") == "side_by_side" and r.get("speedup")]
    if side:
        rounds = sorted({r["paired_rounds"] for r in side if r.get("paired_rounds")})
        in_rounds = (f" in {'/'.join(str(k) for k in rounds)} rounds over the batch sizes"
                     if rounds and rounds != [1] else "")
        over = "rounds, then pairs within them" if in_rounds else "pairs"
        items.append("Speedups, side by side: once a model's units had run (each alone, for its "
                     "latency percentiles and memory), all its variants and "
                     f"{', '.join(sorted({r['reference_mode'] for r in side}))} were timed "
                     "round-robin in one process, from the programs the units saved, in cycles "
                     "of blocks (a settle call, then two timed calls; the order rotated every "
                     f"cycle){in_rounds}. Timed call j of two members' blocks in one cycle is a "
                     "pair: speedup = median of the slower's / the faster's latency over the "
                     f"pairs, 95% percentile bootstrap over {over} ({BOOTSTRAP_RESAMPLES} "
                     "resamples, seeded), for every two variants (table above) as for each over "
                     "the reference. The unpaired p50 ratio compares two units timed minutes apart.")
        latency = [r for r in latency if r not in side]
        refs = sorted({r["reference_mode"] for r in latency
                       if r.get("speedup") is not None and r.get("reference_mode")})
    if refs:
        rounds = sorted({r["paired_rounds"] for r in latency if r.get("paired_rounds")})
        in_rounds = (f", in {'/'.join(str(k) for k in rounds)} rounds over the batch sizes"
                     if rounds and rounds != [1] else "")
        over = "rounds, then pairs within them" if in_rounds else "pairs"
        items.append(f"Speedup vs {', '.join(refs)}: after the unit's own (memory-tracked) pass, "
                     "the reference and the unit are timed again in the same process, in "
                     "alternating blocks (a settle call, then two timed calls; reference first on "
                     f"even pairs, unit first on odd), one batch size at a time{in_rounds}; "
                     "speedup = median of reference / unit over the pairs, 95% percentile "
                     f"bootstrap over {over} ({BOOTSTRAP_RESAMPLES} resamples, seeded). "
                     "Speedup over another fp32 baseline divides two paired speedups. The "
                     "unpaired p50 ratio compares two units timed minutes apart.")
    return items


def accuracy_notes(models: list[dict]) -> list[str]:
    """What accuracy meant for the tasks this job measured, and nothing about the others."""
    from qbench.evaluate.agreement import DECIDED_MARGIN

    items = []
    detectors = sorted({m["eval_images"] for m in models if m["eval_images"]
                        and m.get("map") is not None})
    if detectors:
        items.append(f"Accuracy (detectors): COCO mAP by pycocotools on "
                     f"{', '.join(map(str, detectors))} held-out images; agreement compares each "
                     "mode's detections with fp32's on the same images (same label, IoU ≥ 0.5); "
                     "count error is |n − n_fp32| / n_fp32 per image; the mAP drop's interval is "
                     "a paired bootstrap over the images.")
    classifiers = sorted({m["eval_images"] for m in models if m["eval_images"]
                          and m.get("task") == "classification"})
    if classifiers:
        items.append(f"Accuracy (classifiers): top-1 against the labels and top-1 agreement with "
                     f"fp32 on {', '.join(map(str, classifiers))} held-out images, each with its "
                     "95% Wilson interval. \"Where fp32 decided\" counts only the images on which "
                     f"fp32's top class leads its runner-up by ≥ {DECIDED_MARGIN:g} softmax "
                     "probability: a flip outside them breaks a near-tie fp32 itself barely "
                     "resolved (bf16 rounding flips such images too).")
    if any(m.get("output_cosine") is not None for m in models):
        items.append("Output agreement: cosine similarity and SQNR of each mode's raw outputs "
                     "against fp32's on the same inputs.")
    return items


CORRECTION_TEXT = {
    "": "",
    "fast": "; biases corrected for the int8 weights' mean output offset",
    "full": "; biases corrected for the mean output offset measured through the int8 model "
            "(NNCF's bias correction: each layer also absorbs the error of those before it)",
}


def _correction(row: dict) -> str:
    """The row's bias correction: "", "fast" or "full" (rows written before the method
    column say only whether biases were corrected, which was the fast form)."""
    if not row.get("calibration_bias_correction"):
        return ""
    return row.get("calibration_bias_correction_method") or "fast"


def _by_nncf(mode: str) -> bool:
    """Whether a mode is calibrated by NNCF (the OpenVINO backend's modes)."""
    from qbench.modes import MODES

    return mode in MODES and MODES[mode].backend == "openvino"


def runtime_notes(models: list[dict]) -> list[str]:
    """How each runtime that reports its compile properties was configured (OpenVINO), per
    mode, from the rows' runtime_config."""
    import json

    configs: dict[str, set[str]] = {}
    for m in models:
        if m.get("runtime_config"):
            configs.setdefault(m["runtime_config"], set()).add(m["mode"])
    items = []
    for text, mode_set in sorted(configs.items()):
        props = json.loads(text)
        listed = ", ".join(f"{k} {v}" for k, v in props.items())
        items.append(f"{', '.join(sorted(mode_set))}: compiled by OpenVINO's CPU plugin with "
                     f"{listed} (the plugin's own report; threads are benchmark.threads, as "
                     "for torch and ONNX Runtime).")
    return items


def how_measured(models: list[dict], latency: list[dict]) -> Bullets | None:
    if not latency and not models:
        return None
    items = []
    plans = sorted({(r["warmup"], r["iterations"]) for r in latency})
    if plans:
        items.append("Latency: " + "; ".join(f"{w} warm-up then {i} timed iterations" for w, i in plans)
                     + " per batch size. Each iteration is one forward pass of the whole batch, "
                     "timed with `time.perf_counter` (after `torch.cuda.synchronize` on CUDA); "
                     "p50/p90 are percentiles over the iterations, throughput is batch / p50. "
                     "Detector times include the model's resize/normalise, RPN, RoI heads and NMS.")
    items += sampling_notes(latency)
    items.append("Size: bytes of the serialized model (`torch.save` of the state_dict, the "
                 "ONNX file, or the OpenVINO IR's .xml and .bin); reduction is relative to fp32 "
                 "of the same model.")
    items.append("Process memory: peak resident set size of the worker process and its children, "
                 "sampled every 5 ms by a sidecar process during the timed loop (warm-up excluded).")
    if any(r["cuda_max_allocated_bytes"] for r in latency):
        items.append("CUDA memory: `torch.cuda.max_memory_allocated`/`max_memory_reserved`, reset "
                     "before each batch size; NVML: device memory used by all processes, peak.")
    for nncf, method, images, per_channel, corrected in sorted({
            (_by_nncf(m["mode"]), m["calibration_method"], m["calibration_images"],
             m["calibration_per_channel"], _correction(m))
            for m in models if m["calibration_method"]}):
        how = f"NNCF {method} ranges (OpenVINO modes)" if nncf else f"{method} observer"
        items.append(f"Calibration: {how}, {images} images "
                     f"({'per-channel' if per_channel else 'per-tensor'} weights"
                     + CORRECTION_TEXT[corrected]
                     + "); calibration images are never evaluation images.")
    items += runtime_notes(models)
    items += accuracy_notes(models)
    if any(m["trained_weights"] is False for m in models):
        items.append("Models with random weights have no accuracy columns: random weights are never "
                     "reported as an accuracy.")
    timing = time_by_phase(models)
    if timing:
        items.append(timing)
    envs = {(r["env_fingerprint"], r["torch_version"], r["torchvision_version"], r["cpu_model"],
             r["threads"], r["gpu_name"], r["host"], r["qbench_version"], r.get("cpu_isa"),
             r.get("cpu_family"), r.get("cpu_model_number"))
            for r in (latency or models)}
    for fp, torch_v, tv_v, cpu, threads, gpu, host, qb, isa, fam, num in sorted(envs, key=str):
        isa_text = ("" if isa is None else
                    f" (int8 ISA: {isa or 'none'}; family {fam} model {num})")
        items.append(f"Environment `{fp}`: torch {torch_v}, torchvision {tv_v}, CPU {cpu}"
                     f"{isa_text} with {threads} threads, GPU {gpu or 'none'}, host {host}, "
                     f"qbench {qb}.")
    return Bullets(items)


def time_by_phase(models: list[dict]) -> str | None:
    """The job's unit time summed by phase (wall clock, each unit in its own process)."""
    timed = [m for m in models if m.get("run_seconds") is not None]
    if not timed:
        return None
    totals = job_time_by_phase(timed)
    run = sum(m["run_seconds"] for m in timed)
    parts = [f"{LABELS[p]} {s:.1f} s ({s / run:.0%})" for p, s in totals.items() if s and run]
    other = run - sum(totals.values())
    if other > 0.05:
        parts.append(f"other {other:.1f} s")
    return (f"Time by phase, summed over {len(timed)} unit(s) ({run:.1f} s of unit time): "
            + ", ".join(parts) + ".")
