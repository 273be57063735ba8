"""Does an ONNX file's output signature fit the manifest's decoder? Read from the file alone."""

from __future__ import annotations

from pathlib import Path

from qbench.decode.spec import OutputsSpec


def onnx_output_shapes(path: str | Path) -> list[tuple[str, list[int | None]]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [(o.name, [d.dim_value if d.HasField("dim_value") else None
                      for d in o.type.tensor_type.shape.dim]) for o in graph.output]


def layout_problem(spec: OutputsSpec, shapes: list[tuple[str, list[int | None]]]) -> str | None:
    """Why the outputs cannot be decoded by spec.decoder, or None when they fit."""
    if spec.decoder is None:
        return None
    ranks = [len(s) for _, s in shapes]
    shown = ", ".join(f"{n} {['?' if d is None else d for d in s]}" for n, s in shapes)
    if spec.decoder == "ultralytics":
        ok = len(shapes) >= 1 and ranks[0] == 3 and (shapes[0][1][1] is None or shapes[0][1][1] > 4)
        want = "one [B, 4 + classes, anchors] output"
    elif spec.decoder == "torchvision":
        ok = len(shapes) == 3 and sorted(ranks) in ([1, 1, 2], [2, 2, 3])
        want = "three outputs boxes [N, 4], labels [N], scores [N]"
    elif spec.decoder == "ssd":
        ok = len(shapes) == 2 and ranks == [3, 3] and any(s[-1] == 4 for _, s in shapes)
        want = "two outputs boxes [B, N, 4] and scores [B, N, C]"
    else:  # gfl
        bins = 4 * (spec.reg_max + 1)
        n = len(spec.strides)
        ok = len(shapes) == 2 * n and all(r == 3 for r in ranks) and \
            sum(s[-1] == bins for _, s in shapes) == n
        want = f"{n} score outputs [B, N_l, C] and {n} distribution outputs [B, N_l, {bins}]"
    if ok:
        return None
    return f"decoder {spec.decoder} expects {want}; the file has {shown or 'no outputs'}"


def check_onnx_layout(spec: OutputsSpec | None, path: str | Path) -> str | None:
    if spec is None or spec.decoder is None:
        return None
    return layout_problem(spec, onnx_output_shapes(path))


def check_manifest_outputs(manifest, base: Path, source: str) -> None:
    """Refuse (ManifestError, one line) an ONNX file whose outputs its decoder cannot read."""
    from qbench.manifest import ManifestError, allowed_roots, resolve_inside

    for i, m in enumerate(manifest.models):
        if m.source != "onnx" or m.outputs is None or m.outputs.decoder is None or not m.path:
            continue
        path = resolve_inside(m.path, base, [base, *allowed_roots()])  # as check_files does
        try:
            problem = check_onnx_layout(m.outputs, path)
        except Exception:  # unreadable file: the loader names it when the unit runs
            continue
        if problem:
            raise ManifestError(f"{source}: models[{i}].outputs.decoder: {problem}")


def manifest_warnings(manifest) -> list[str]:
    """One line per model whose accuracy will be null because nothing says how to feed it."""
    from qbench.preprocess.defaults import UNDECLARED

    return [f"warning: models[{i}] ({m.id}): {UNDECLARED}"
            for i, m in enumerate(manifest.models) if m.source == "onnx" and m.preprocess is None]
