"""Job manifests: pydantic models of the YAML contract, validation, and expansion into units.

Field names here are public API (see README "Manifest"): keep them, add freely.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.quantize.registry import mode_names, validate_mode_device

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message is one line naming the field or file."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Strict):
    id: str = Field(pattern=ID_PATTERN)
    source: Literal["torchvision", "yolo", "onnx"] = "torchvision"
    arch: str | None = None
    checkpoint: str | None = None
    path: str | None = None  # the .onnx file for source: onnx
    num_classes: int | None = Field(default=None, ge=1)
    input_size: tuple[int, int] = (320, 320)

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 32:
            raise ValueError("both sides must be at least 32 pixels")
        return v

    @model_validator(mode="after")
    def _source_fields(self) -> ModelSpec:
        if self.source in ("torchvision", "yolo") and not self.arch:
            raise ValueError(f"source {self.source} needs an arch")
        if self.source == "onnx" and not self.path:
            raise ValueError("source onnx needs a path to the .onnx file")
        return self


class CalibrationSpec(Strict):
    images: int = Field(default=16, ge=1, le=10_000)
    method: Literal["minmax", "histogram", "percentile"] = "histogram"
    per_channel: bool = True
    percentile: float = Field(default=99.99, gt=50, le=100)


class TargetSpec(Strict):
    """What mode int8_mixed must reach by keeping the fewest most sensitive layers float."""

    max_map_drop: float | None = Field(default=None, ge=0)  # mAP points vs fp32 (needs a dataset)
    min_agreement: float = Field(default=0.99, gt=0, le=1)  # agreement with fp32, without one
    max_float: int | None = Field(default=None, ge=0)  # at most this many groups kept float


class QuantizationSpec(Strict):
    modes: list[str] = Field(default_factory=lambda: ["fp32", "int8_static"], min_length=1)
    calibration: CalibrationSpec = CalibrationSpec()
    keep_float: list[str] = Field(default_factory=list)
    target: TargetSpec = TargetSpec()

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, v: list[str]) -> list[str]:
        known = mode_names()
        for mode in v:
            if mode not in known:
                raise ValueError(f"unknown mode {mode!r}; known: {', '.join(known)}")
        if len(set(v)) != len(v):
            raise ValueError("a mode is listed twice")
        return v


class BenchmarkSpec(Strict):
    devices: list[Literal["cpu", "cuda"]] = Field(default_factory=lambda: ["cpu"], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 32, 64], min_length=1)
    warmup: int = Field(default=5, ge=0)
    iterations: int = Field(default=30, ge=1)
    threads: int | None = Field(default=None, ge=1)
    # Enough samples (README "Latency"): at least `iterations` and `min_seconds` of measured
    # time per batch size, at most `max_iterations` / `max_seconds` (a cap wins).
    min_seconds: float = Field(default=0.0, ge=0)
    max_iterations: int | None = Field(default=None, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    # Paired speedup: the reference timed in the same process, interleaved with the unit.
    pairing: Literal["interleaved", "off"] = "interleaved"
    reference: Literal["fp32", "fp32_compiled", "ort_fp32"] = "fp32"

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        for b in v:
            if b < 1:
                raise ValueError(f"batch size {b} must be at least 1")
        if len(set(v)) != len(v):
            raise ValueError("a batch size is listed twice")
        return v


class DatasetSpec(Strict):
    format: Literal["coco", "imagefolder"] = "coco"
    images: str
    annotations: str | None = None
    eval_images: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _coco_needs_annotations(self) -> DatasetSpec:
        if self.format == "coco" and not self.annotations:
            raise ValueError("format coco needs annotations (an instances JSON)")
        return self


class InspectSpec(Strict):
    images: int = Field(default=1, ge=0)
    layers: Literal["conv", "linear", "all"] = "conv"


class Manifest(Strict):
    name: str = Field(pattern=ID_PATTERN)
    models: list[ModelSpec] = Field(min_length=1)
    quantization: QuantizationSpec = QuantizationSpec()
    benchmark: BenchmarkSpec = BenchmarkSpec()
    dataset: DatasetSpec | None = None
    inspect: InspectSpec = InspectSpec()
    artifacts: bool = True  # save each benchmarked model under results/artifacts/

    @model_validator(mode="after")
    def _unique_ids_and_devices(self) -> Manifest:
        target = self.quantization.target
        if target.max_map_drop is not None and self.dataset is None:
            raise ValueError("quantization.target.max_map_drop needs a dataset "
                             "(without one, use min_agreement)")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("models: two models share an id")
        for device in self.benchmark.devices:
            for mode in self.quantization.modes:
                problem = validate_mode_device(mode, device)
                if problem:
                    raise ValueError(f"quantization.modes: {problem}")
        return self


class Unit(Strict):
    """One work item: a model x mode x device of a job. JSON-serialisable for Celery."""

    job_id: str
    job_name: str
    job_date: str  # YYYY-MM-DD the job was created: the Parquet partition, stable on retry
    unit_id: str
    model: ModelSpec
    mode: str
    device: Literal["cpu", "cuda"]
    quantization: QuantizationSpec
    benchmark: BenchmarkSpec
    dataset: DatasetSpec | None
    inspect: InspectSpec
    base_dir: str  # where relative manifest paths resolve
    artifacts: bool = True  # save the benchmarked model (manifest `artifacts`)

    @property
    def queue(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    def resolve(self, relative: str) -> Path:
        return resolve_inside(relative, Path(self.base_dir), allowed_roots())


DEFAULT_DATA_ROOTS = os.pathsep.join(["data", "models"])


def allowed_roots() -> list[Path]:
    """Folders manifest paths may point into besides the manifest's own folder.

    QBENCH_DATA_ROOTS, os.pathsep-separated; default `data` and `models` of the working folder.
    """
    raw = os.environ.get("QBENCH_DATA_ROOTS", DEFAULT_DATA_ROOTS)
    return [Path(p).resolve() for p in raw.split(os.pathsep) if p]


def resolve_inside(relative: str, base: Path, roots: list[Path]) -> Path:
    """Resolve a manifest path against its base; refuse anything outside base and the roots."""
    path = (base / relative).resolve()
    for root in [base.resolve(), *roots]:
        if path == root or root in path.parents:
            return path
    raise ManifestError(f"path {relative!r} resolves outside the allowed roots ({path})")


def _field_path(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        else:
            parts.append(str(p))
    return ".".join(parts)


def parse_manifest(text: str, source: str = "<manifest>") -> Manifest:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ManifestError(f"{source}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: a manifest is a YAML mapping with name and models")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _field_path(err["loc"]) or "manifest"
        msg = err["msg"].removeprefix("Value error, ")
        raise ManifestError(f"{source}: {field}: {msg}") from None


def load_manifest(path: str | Path) -> tuple[Manifest, Path]:
    """Read and validate a manifest file; returns it and the folder its paths resolve against."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    manifest = parse_manifest(path.read_text(), str(path))
    check_files(manifest, path.parent.resolve(), str(path))
    return manifest, path.parent.resolve()


def check_files(manifest: Manifest, base: Path, source: str) -> None:
    """Fail early on files the manifest names that are missing or outside the allowed roots."""
    roots = allowed_roots()
    named: list[tuple[str, str | None]] = []
    for i, m in enumerate(manifest.models):
        named += [(f"models[{i}].checkpoint", m.checkpoint), (f"models[{i}].path", m.path)]
    if manifest.dataset:
        named += [("dataset.images", manifest.dataset.images),
                  ("dataset.annotations", manifest.dataset.annotations)]
    for field, value in named:
        if value is None:
            continue
        try:
            resolved = resolve_inside(value, base, roots)
        except ManifestError as exc:
            raise ManifestError(f"{source}: {field}: {exc}") from None
        if not resolved.exists():
            raise ManifestError(f"{source}: {field}: file not found: {resolved}")


def job_id_for(manifest: Manifest, when: dt.datetime, nightly: bool = False) -> str:
    """A job id: manifest name, its time, and a digest of the manifest's content.

    Ad-hoc jobs are stamped to the second, so rerunning a manifest adds a new job instead of
    overwriting the last one. Nightly jobs carry only the date, so a second trigger on the
    same night rewrites that night's rows instead of adding a new job.
    """
    digest = hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()[:6]
    if nightly:
        return f"{manifest.name}-nightly-{when:%Y%m%d}-{digest}"
    return f"{manifest.name}-{when:%Y%m%dT%H%M%S}-{digest}"


def job_date_of(job_id: str) -> dt.date:
    """The date a job id was stamped with (its Parquet partition)."""
    match = re.search(r"-(\d{8})(?:T\d{6})?-[0-9a-f]{6}$", job_id)
    if not match:
        raise ManifestError(f"job id {job_id!r} has no date stamp")
    return dt.datetime.strptime(match.group(1), "%Y%m%d").date()


def unit_id_for(job_id: str, model_id: str, mode: str, device: str) -> str:
    key = json.dumps([job_id, model_id, mode, device]).encode()
    return hashlib.sha256(key).hexdigest()[:16]


def expand(manifest: Manifest, job_id: str, base_dir: Path) -> list[Unit]:
    """Every model x mode x device of a job, with stable ids (a redelivery rewrites, never adds)."""
    day = job_date_of(job_id).isoformat()
    units = []
    for model in manifest.models:
        for device in manifest.benchmark.devices:
            for mode in manifest.quantization.modes:
                units.append(Unit(
                    job_id=job_id, job_name=manifest.name, job_date=day,
                    unit_id=unit_id_for(job_id, model.id, mode, device),
                    model=model, mode=mode, device=device,
                    quantization=manifest.quantization, benchmark=manifest.benchmark,
                    dataset=manifest.dataset, inspect=manifest.inspect,
                    base_dir=str(base_dir), artifacts=manifest.artifacts,
                ))
    return units


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)
