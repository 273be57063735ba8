"""Job manifests: pydantic models of the YAML contract, validation, and expansion into units.

Field names here are public API (see docs/manifest.md): keep them, add freely. A leaf: it
imports neither torch nor the mode registry (modes and arch names come from qbench.catalogue),
so `qbench validate`, `status` and `submit` start without loading torch.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from qbench.catalogue import arch_problem, torchvision_task
from qbench.env import env_int
from qbench.errors import ManifestError
from qbench.modes import (
    MODES,
    mode_device_problem,
    mode_names,
    mode_source_problem,
    reference_modes,
)

__all__ = ["ManifestError", "Manifest", "Unit", "load_manifest", "parse_manifest"]
from qbench.decode.spec import OutputsSpec
from qbench.preprocess.spec import PreprocessSpec

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# <name>-<stamp>-<digest>; a user may pass their own to `qbench run --job-id`. Never a path.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


def max_input_side() -> int:
    """A limit a user with a bigger machine may raise through the environment (read when a
    manifest is checked, so a bad value is a one-line error, not a failed import)."""
    return env_int("QBENCH_MAX_INPUT_SIDE", 4096)


def max_batch_size() -> int:
    return env_int("QBENCH_MAX_BATCH_SIZE", 4096)


# Bounds on what would exhaust the machine (docs/manifest.md, Limits).
MAX_MANIFEST_BYTES = 1_000_000
MAX_YAML_DEPTH = 32  # a manifest nests 4 levels; deep nesting would exhaust the recursion
MAX_INT_DIGITS = 30  # no count, size or id of a manifest needs more
MAX_YAML_VALUES = 100_000  # values once aliases are expanded (a "billion laughs" has 10^9)
MAX_MODELS = 64
MAX_UNITS = 512  # models x modes x devices of one job
MAX_BATCH_SIZES = 16
MAX_ITERATIONS = 100_000
MAX_WARMUP = 10_000
MAX_ROUNDS = 20
MAX_SECONDS = 24 * 3600  # min_seconds / max_seconds per batch size
DEFAULT_UNIT_SECONDS = 6 * 3600  # benchmark.max_unit_seconds
MAX_UNIT_SECONDS = 7 * 24 * 3600
MAX_THREADS = 1024
MAX_KEEP_FLOAT = 256
MAX_PATTERN_CHARS = 200
MAX_INSPECT_IMAGES = 64


class Strict(BaseModel):
    # no NaN or inf: they pass every bound (nan > x and nan < x are both false)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSpec(Strict):
    id: str = Field(pattern=ID_PATTERN)
    source: Literal["torchvision", "yolo", "onnx"] = "torchvision"
    arch: str | None = Field(default=None, max_length=200)
    checkpoint: str | None = Field(default=None, max_length=4096)
    path: str | None = Field(default=None, max_length=4096)  # the .onnx file for source: onnx
    num_classes: StrictInt | None = Field(default=None, ge=1, le=100_000)
    input_size: tuple[StrictInt, StrictInt] = (320, 320)
    preprocess: PreprocessSpec | None = None  # None: the source's default (worker/preprocess/)
    outputs: OutputsSpec | None = None  # how to decode the outputs (worker/decode/)

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 32:
            raise ValueError("both sides must be at least 32 pixels")
        if max(v) > max_input_side():
            raise ValueError(f"a side is at most {max_input_side()} pixels "
                             "(QBENCH_MAX_INPUT_SIDE raises the limit)")
        return v

    @model_validator(mode="after")
    def _source_fields(self) -> ModelSpec:
        if self.source in ("torchvision", "yolo") and not self.arch:
            raise ValueError(f"source {self.source} needs an arch")
        if self.source == "onnx" and not self.path:
            raise ValueError("source onnx needs a path to the .onnx file")
        problem = arch_problem(self.source, self.arch)
        if problem:
            raise ValueError(problem)
        if (self.outputs is not None and self.outputs.category_map is not None
                and self.outputs.decoder is None and not self.is_torchvision_detector):
            raise ValueError("outputs.category_map needs a decoder (the model's outputs are "
                             "not boxes)")
        return self

    @property
    def is_torchvision_detector(self) -> bool:
        return self.source == "torchvision" and (self.arch == "fixture" or (
            self.arch is not None and torchvision_task(self.arch) == "detection"))


class CalibrationSpec(Strict):
    images: StrictInt = Field(default=16, ge=1, le=10_000)
    # mean_minmax: each activation's range is the mean over the calibration feeds of each
    # feed's min and max (NNCF's default), less swayed by one outlier image than minmax
    method: Literal["minmax", "histogram", "percentile", "mean_minmax"] = "histogram"
    per_channel: StrictBool = True
    percentile: StrictFloat = Field(default=99.99, gt=50, le=100)
    # subtract the mean output offset int8 weights cause from each bias. true (or "fast"):
    # each layer's own offset; "full" (OpenVINO modes, NNCF's BiasCorrection): the offset
    # measured through the int8 model, so each layer also absorbs the layers before it
    bias_correction: StrictBool | Literal["fast", "full"] = False

    @property
    def bias_correction_method(self) -> str | None:
        """None, "fast" or "full"."""
        if self.bias_correction is False:
            return None
        return "fast" if self.bias_correction is True else self.bias_correction


class TargetSpec(Strict):
    """What mode int8_mixed must reach by keeping the fewest most sensitive layers float."""

    max_map_drop: StrictFloat | None = Field(default=None, ge=0, le=100)  # mAP points vs fp32 (needs a dataset)
    min_agreement: StrictFloat = Field(default=0.99, gt=0, le=1)  # agreement with fp32, without one
    # continuous instead: mean cosine similarity of the outputs with fp32 (not for detectors)
    min_cosine: StrictFloat | None = Field(default=None, gt=0, le=1)
    max_float: StrictInt | None = Field(default=None, ge=0, le=100_000)  # groups kept float at most
    # who searches: qbench's ranking and greedy search (every searching mode), or NNCF's
    # accuracy control (quantize_with_accuracy_control; ov_int8_mixed only) with qbench's scorer
    search: Literal["qbench", "nncf"] = "qbench"


class QuantizationSpec(Strict):
    modes: list[str] = Field(default_factory=lambda: ["fp32", "int8_static"], min_length=1,
                             max_length=len(MODES))
    calibration: CalibrationSpec = CalibrationSpec()
    keep_float: list[str] = Field(default_factory=list, max_length=MAX_KEEP_FLOAT)
    target: TargetSpec = TargetSpec()

    @field_validator("keep_float")
    @classmethod
    def _patterns_compile(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not pattern or len(pattern) > MAX_PATTERN_CHARS:
                raise ValueError(f"a pattern is 1 to {MAX_PATTERN_CHARS} characters")
            problem = glob_problem(pattern)
            if problem:
                raise ValueError(f"pattern {pattern!r} does not compile ({problem})")
        return v

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


def glob_problem(pattern: str) -> str | None:
    """Why an fnmatch pattern is malformed, else None. fnmatch itself never fails: it reads an
    unclosed [ literally and silently drops an empty range such as [z-a], so a typo would
    match nothing without a word."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            end = pattern.find("]", j)
            if end < 0:
                return f"unclosed [ at character {i + 1}"
            body = pattern[j:end]
            for a, b in re.findall(r"(.)-(.)", body):
                if a > b:
                    return f"empty range {a}-{b}"
            i = end
        i += 1
    try:
        re.compile(fnmatch.translate(pattern))
    except re.error as exc:
        return str(exc)
    return None


class BenchmarkSpec(Strict):
    devices: list[Literal["cpu", "cuda"]] = Field(default_factory=lambda: ["cpu"], min_length=1,
                                                  max_length=2)
    batch_sizes: list[StrictInt] = Field(default_factory=lambda: [1, 2, 4, 32, 64], min_length=1,
                                         max_length=MAX_BATCH_SIZES)
    warmup: StrictInt = Field(default=5, ge=0, le=MAX_WARMUP)
    iterations: StrictInt = Field(default=30, ge=1, le=MAX_ITERATIONS)
    threads: StrictInt | None = Field(default=None, ge=1, le=MAX_THREADS)
    # Enough samples (docs/measurement.md, "Samples"): at least `iterations` and `min_seconds` of measured
    # time per batch size, at most `max_iterations` / `max_seconds` (a cap wins).
    min_seconds: StrictFloat = Field(default=0.0, ge=0, le=MAX_SECONDS)
    max_iterations: StrictInt | None = Field(default=None, ge=1, le=MAX_ITERATIONS)
    max_seconds: StrictFloat | None = Field(default=None, gt=0, le=MAX_SECONDS)
    # Paired speedup: side_by_side times all of a model's variants and the reference in one
    # process after its units (docs/measurement.md); interleaved, the reference beside each unit.
    pairing: Literal["side_by_side", "interleaved", "off"] = "side_by_side"
    reference: Literal[tuple(reference_modes())] = "fp32"  # the float modes of worker/modes.py
    # The paired pass in rounds over the batch sizes; its CI resamples rounds, then pairs.
    rounds: StrictInt = Field(default=3, ge=1, le=MAX_ROUNDS)
    # Wall-clock limit per unit (docs/operations.md): a unit past it is killed and recorded
    # with status timeout; QBENCH_MAX_UNIT_SECONDS on a worker caps it (the lower wins).
    max_unit_seconds: StrictFloat = Field(default=DEFAULT_UNIT_SECONDS, gt=0, le=MAX_UNIT_SECONDS)

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        for b in v:
            if b < 1:
                raise ValueError(f"batch size {b} must be at least 1")
            if b > max_batch_size():
                raise ValueError(f"batch size {b} is above the limit {max_batch_size()} "
                                 "(QBENCH_MAX_BATCH_SIZE raises it)")
        if len(set(v)) != len(v):
            raise ValueError("a batch size is listed twice")
        return v

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):  # the same unit ids twice: one unit would never report
            raise ValueError("a device is listed twice")
        return v


class DatasetSpec(Strict):
    format: Literal["coco", "imagefolder", "kitti", "yolo", "voc"] = "coco"
    images: str = Field(max_length=4096)
    annotations: str | None = Field(default=None, max_length=4096)
    eval_images: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    # kitti | yolo | voc (docs/datasets.md): the label folder (default: the format's own
    # place beside images), a YOLO data.yaml with the class names, the classes that count
    # (category ids 1..N in this order) and KITTI AP's IoU threshold per class.
    labels: str | None = Field(default=None, max_length=4096)
    data_yaml: str | None = Field(default=None, max_length=4096)
    classes: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    iou_thresholds: dict[str, StrictFloat] | None = Field(default=None, max_length=1000)

    @field_validator("classes")
    @classmethod
    def _class_names(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for name in v:
            if not name or len(name) > 200 or name != name.strip() or "\n" in name:
                raise ValueError(f"class name {name!r}: 1 to 200 characters on one line, "
                                 "without leading or trailing spaces")
        if len({n.lower() for n in v}) != len(v):
            raise ValueError("a class is listed twice")
        return v

    @model_validator(mode="after")
    def _format_fields(self) -> DatasetSpec:
        if self.format == "coco" and not self.annotations:
            raise ValueError("format coco needs annotations (an instances JSON)")
        labelled = self.format in ("kitti", "yolo", "voc")
        if self.format == "kitti" and any(len(c.split()) > 1 for c in self.classes or []):
            raise ValueError("classes: a KITTI type is one word (label lines split on spaces)")
        for name in ("labels", "classes"):
            if getattr(self, name) is not None and not labelled:
                raise ValueError(f"{name} is for format kitti, yolo or voc (format "
                                 f"{self.format} does not read it)")
        if self.annotations is not None and labelled:
            raise ValueError(f"format {self.format} reads labels (a folder), not annotations")
        if self.data_yaml is not None and self.format != "yolo":
            raise ValueError("data_yaml is for format yolo")
        if self.format == "yolo" and self.classes is None and self.data_yaml is None:
            raise ValueError("format yolo needs class names: classes or data_yaml")
        if self.iou_thresholds is not None:
            if self.format != "kitti":
                raise ValueError("iou_thresholds is for format kitti (KITTI's own AP)")
            from qbench.evaluate.formats.kitti import DEFAULT_CLASSES

            counted = {c.lower() for c in (self.classes or DEFAULT_CLASSES)}
            for name, value in self.iou_thresholds.items():
                if name.lower() not in counted:
                    raise ValueError(f"iou_thresholds.{name}: not one of the classes "
                                     f"({', '.join(self.classes or DEFAULT_CLASSES)})")
                if not 0 < value <= 1:
                    raise ValueError(f"iou_thresholds.{name}: {value} is not within (0, 1]")
        return self

    @property
    def label_folder(self) -> str | None:
        """The labels folder as the manifest names it (or its format's default)."""
        if self.format not in ("kitti", "yolo", "voc"):
            return None
        from qbench.evaluate.formats import default_labels

        return self.labels or default_labels(self.format, self.images)

    def named_paths(self) -> list[tuple[str, str, str]]:
        """(field, path as written, file | folder) of every input it names."""
        named = [("dataset.images", self.images, "folder"),
                 ("dataset.annotations", self.annotations, "file"),
                 ("dataset.labels", self.label_folder, "folder"),
                 ("dataset.data_yaml", self.data_yaml, "file")]
        return [(f, v, k) for f, v, k in named if v is not None]


class InspectSpec(Strict):
    images: StrictInt = Field(default=1, ge=0, le=MAX_INSPECT_IMAGES)
    layers: Literal["conv", "linear", "all"] = "conv"


class Manifest(Strict):
    name: str = Field(pattern=ID_PATTERN)
    models: list[ModelSpec] = Field(min_length=1, max_length=MAX_MODELS)
    quantization: QuantizationSpec = QuantizationSpec()
    benchmark: BenchmarkSpec = BenchmarkSpec()
    dataset: DatasetSpec | None = None
    inspect: InspectSpec = InspectSpec()
    artifacts: StrictBool = True  # save each benchmarked model under results/artifacts/

    @model_validator(mode="after")
    def _unique_ids_and_devices(self) -> Manifest:
        target = self.quantization.target
        if target.max_map_drop is not None and self.dataset is None:
            raise ValueError("quantization.target.max_map_drop needs a dataset "
                             "(without one, use min_agreement)")
        searching = [m for m in self.quantization.modes if m in MODES and MODES[m].precision == "mixed"]
        if target.max_map_drop is not None and searching:
            for i, m in enumerate(self.models):
                detector = (m.outputs is not None and m.outputs.decoder is not None) or (
                    m.source == "torchvision" and (m.arch == "fixture"
                                                   or torchvision_task(m.arch) == "detection"))
                if not detector:
                    raise ValueError(f"quantization.target.max_map_drop: models[{i}] gives no "
                                     "detections to score (a classifier, or raw outputs without "
                                     "outputs.decoder); use min_agreement")
        if target.min_cosine is not None:
            for i, m in enumerate(self.models):
                if m.source == "torchvision" and (m.arch == "fixture"
                                                  or torchvision_task(m.arch) == "detection"):
                    raise ValueError(f"quantization.target.min_cosine: models[{i}] is a detector "
                                     "(use min_agreement or max_map_drop)")
        if target.search == "nncf":
            others = [m for m in searching if m != "ov_int8_mixed"]
            if others or not searching:
                raise ValueError("quantization.target.search: nncf (NNCF's accuracy control) "
                                 "searches for ov_int8_mixed only"
                                 + (f", not {', '.join(others)}; run those in another job "
                                    "or use search: qbench" if others else
                                    "; add ov_int8_mixed to quantization.modes"))
        if self.quantization.calibration.bias_correction and not any(
                MODES[m].bias_correction for m in self.quantization.modes if m in MODES):
            takes = ", ".join(m for m in mode_names() if MODES[m].bias_correction)
            raise ValueError("quantization.calibration.bias_correction: none of the modes takes "
                             f"it (list {takes})")
        if self.quantization.calibration.bias_correction == "full":
            fast_only = [m for m in self.quantization.modes
                         if m in MODES and MODES[m].bias_correction
                         and not MODES[m].full_bias_correction]
            if fast_only:
                full = ", ".join(m for m in mode_names() if MODES[m].full_bias_correction)
                raise ValueError("quantization.calibration.bias_correction: full is NNCF's "
                                 f"({full}); "
                                 f"{', '.join(fast_only)} corrects each layer alone: use true, "
                                 "or run it in another job")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("models: two models share an id")
        units = len(self.models) * len(self.quantization.modes) * len(self.benchmark.devices)
        if units > MAX_UNITS:
            raise ValueError(f"manifest: {units} units (models x modes x devices), above the "
                             f"limit of {MAX_UNITS} for one job; split it into several manifests")
        for device in self.benchmark.devices:
            for mode in self.quantization.modes:
                problem = mode_device_problem(mode, device)
                if problem:
                    raise ValueError(f"quantization.modes: {problem}")
        for i, model in enumerate(self.models):
            for mode in self.quantization.modes:
                problem = mode_source_problem(mode, model.source)
                if problem:
                    raise ValueError(f"models[{i}]: {problem}")
        return self


class Unit(Strict):
    """One work item: a model x mode x device of a job. JSON-serialisable for Celery."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    job_name: str = Field(pattern=ID_PATTERN)
    job_date: str = Field(pattern=DATE_PATTERN)  # the job's day: the Parquet partition, stable on retry
    unit_id: str = Field(pattern=ID_PATTERN)
    model: ModelSpec
    mode: str
    device: Literal["cpu", "cuda"]
    quantization: QuantizationSpec
    benchmark: BenchmarkSpec
    dataset: DatasetSpec | None
    inspect: InspectSpec
    base_dir: str  # where relative manifest paths resolve (not a root the worker trusts)
    artifacts: StrictBool = True  # save the benchmarked model (manifest `artifacts`)
    # Set by `qbench submit` (worker/service/staging.py): manifest path as written -> its copy in the
    # results store (relative to it), and the digests of the bytes the unit benchmarks.
    staged: dict[str, str] = Field(default_factory=dict)
    checkpoint_sha256: str | None = None  # the checkpoint's or the ONNX file's
    dataset_sha256: str | None = None

    @property
    def queue(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError(f"unknown mode {v!r}; known: {', '.join(mode_names())}")
        return v

    def resolve(self, relative: str) -> Path:
        """A path of the manifest: this worker's staged copy (inside its own results store's
        inputs/ only), else the path confined to this process's input roots (input_roots)."""
        if relative in self.staged:
            from qbench.results import results_root

            inputs = (results_root() / "inputs").resolve()
            path = (results_root() / self.staged[relative]).resolve()
            if inputs not in path.parents:
                raise ManifestError(f"staged path {self.staged[relative]!r} is outside {inputs}")
            return path
        base = Path(self.base_dir)
        return resolve_inside(relative, base, input_roots(base))


DEFAULT_DATA_ROOTS = os.pathsep.join(["data", "models"])


def allowed_roots() -> list[Path]:
    """Folders manifest paths may point into besides the manifest's own folder.

    QBENCH_DATA_ROOTS, os.pathsep-separated; default `data` and `models` of the working folder.
    """
    raw = os.environ.get("QBENCH_DATA_ROOTS", DEFAULT_DATA_ROOTS)
    return [Path(p).resolve() for p in raw.split(os.pathsep) if p]


# Manifest folders this process read a manifest from itself (load_manifest): their files are
# the user's own. A unit received from elsewhere names a base_dir that is not trusted: its
# paths must lie inside this process's allowed roots.
_TRUSTED_BASES: set[Path] = set()


def input_roots(base: Path) -> list[Path]:
    """Where a unit's input files may be: the allowed roots, plus its base if this process
    loaded the manifest from there."""
    roots = allowed_roots()
    try:
        resolved = base.resolve()
    except (OSError, RuntimeError):
        return roots
    return [resolved, *roots] if resolved in _TRUSTED_BASES else roots


def _resolve(path: Path, shown: str) -> Path:
    try:
        return path.resolve()
    except RuntimeError:  # a symlink loop
        raise ManifestError(f"path {shown!r}: symlink loop") from None
    except OSError as exc:
        raise ManifestError(f"path {shown!r}: cannot be resolved ({exc.strerror or exc})") from None


def is_inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def resolve_inside(relative: str, base: Path, roots: list[Path]) -> Path:
    """Resolve a manifest path against its base (symlinks followed); refuse it outside roots."""
    if "\x00" in relative:
        raise ManifestError(f"path {relative!r}: contains a NUL byte")
    path = _resolve(base / relative, relative)
    if is_inside(path, roots):
        return path
    raise ManifestError(f"path {relative!r} resolves outside the allowed roots ({path})")


def _field_path(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int) and parts:
            parts[-1] = f"{parts[-1]}[{p}]"
        elif isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(str(p))
    return ".".join(parts)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last),
    nesting deeper than MAX_YAML_DEPTH and integers longer than MAX_INT_DIGITS, and reads
    timestamps as the text they are (no manifest field is a date; an impossible one such as
    2024-13-45 would otherwise fail inside the loader)."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node, {}, set()) > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_YAML_VALUES} values once its aliases are expanded",
                node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: construct_mapping reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        text = str(node.value).replace("_", "")
        if sum(c.isalnum() for c in text) > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of more than {MAX_INT_DIGITS} digits", node.start_mark)
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not an integer", node.start_mark) from None

    def construct_yaml_float(self, node):
        try:
            return super().construct_yaml_float(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a number", node.start_mark) from None


def _expanded_size(node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values the node stands for once every alias is expanded (capped just over
    the limit); an alias inside its own anchor counts as over the limit."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        return MAX_YAML_VALUES + 1
    open_nodes.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_YAML_VALUES:
            break
    open_nodes.discard(key)
    sizes[key] = min(total, MAX_YAML_VALUES + 1)
    return sizes[key]


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_yaml_int)
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", UniqueKeyLoader.construct_yaml_float)
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def parse_manifest(text: str, source: str = "<manifest>") -> Manifest:
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ManifestError(f"{source}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except (ValueError, TypeError, RecursionError) as exc:  # a constructor PyYAML did not guard
        raise ManifestError(f"{source}: is not a usable YAML manifest "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: a manifest is a YAML mapping with name and models")
    return validate_data(data, source)


def validate_data(data: object, source: str) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """`field: message` of a pydantic error, on one line."""
    err = exc.errors()[0]
    field = _field_path(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not field:  # a whole-manifest check: its message names the fields itself
        return " ".join(msg.split()) if ":" in msg else f"manifest: {' '.join(msg.split())}"
    return " ".join(f"{field}: {msg}".split())


def load_manifest(path: str | Path) -> tuple[Manifest, Path]:
    """Read and validate a manifest file; returns it and the folder its paths resolve against."""
    path = Path(path)
    try:
        if not path.exists():
            raise ManifestError(f"{path}: manifest file not found")
        if not path.is_file():  # a folder, a FIFO (that would block the read), a device
            raise ManifestError(f"{path}: not a regular file")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: {path.stat().st_size} bytes, above the "
                                f"{MAX_MANIFEST_BYTES}-byte limit for a manifest")
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    manifest = parse_manifest(text, str(path))
    base = _resolve(path.parent, str(path.parent))
    check_files(manifest, base, str(path))
    _TRUSTED_BASES.add(base)
    return manifest, base


def check_files(manifest: Manifest, base: Path, source: str) -> None:
    """Fail early on files the manifest names: missing, outside the roots, of the wrong kind,
    or (a COCO instances JSON) unusable by the model. Nothing here needs weights."""
    roots = [base, *allowed_roots()]
    named: list[tuple[str, str | None, str]] = []
    for i, m in enumerate(manifest.models):
        named += [(f"models[{i}].checkpoint", m.checkpoint, "file"),
                  (f"models[{i}].path", m.path, "file")]
    if manifest.dataset:
        named += manifest.dataset.named_paths()
    resolved: dict[str, Path] = {}
    for field, value, kind in named:
        if value is None:
            continue
        try:
            path = resolve_inside(value, base, roots)
        except ManifestError as exc:
            raise ManifestError(f"{source}: {field}: {exc}") from None
        if not path.exists():
            raise ManifestError(f"{source}: {field}: file not found: {path}")
        if kind == "file" and path.is_dir():
            raise ManifestError(f"{source}: {field}: {path} is a folder, not a file")
        if kind == "file" and not path.is_file():  # a FIFO or device would block its reader
            raise ManifestError(f"{source}: {field}: {path} is not a regular file")
        if kind == "folder" and not path.is_dir():
            raise ManifestError(f"{source}: {field}: {path} is a file, not a folder")
        resolved[field] = path
    from qbench.file_checks import check_model_files

    check_model_files(manifest, resolved, source)  # a torch archive, an ONNX graph: no torch
    if manifest.dataset:
        check_dataset(manifest, resolved, source, tuple(roots))


def check_dataset(manifest: Manifest, resolved: dict[str, Path], source: str,
                  roots: tuple[Path, ...] = ()) -> None:
    """The dataset fits every model: its format to the model's task, its category ids to the
    model's classes (or its outputs.category_map), every KITTI/YOLO/VOC label file readable,
    every image it names confined and, where it exists, a regular file."""
    from qbench.catalogue import FIXTURE_ARCH, FIXTURE_CLASSES, torchvision_task
    from qbench.evaluate.coco_doc import (
        DatasetError,
        check_coco_document,
        check_image_files,
        read_coco_document,
    )
    from qbench.evaluate.formats import BOX_FORMATS, read_labels

    spec = manifest.dataset
    tasks = {i: (torchvision_task(m.arch) if m.source == "torchvision" and m.arch else
                 "yolo" if m.source == "yolo" else None)
             for i, m in enumerate(manifest.models)}
    # An image folder serves every family (labels, or unlabelled calibration and agreement);
    # boxes need a model whose outputs are boxes: a detector, YOLO, or a declared decoder.
    if spec.format in BOX_FORMATS:
        for i, m in enumerate(manifest.models):
            decoded = m.outputs is not None and m.outputs.decoder is not None
            if tasks[i] == "classification" or (m.source == "onnx" and not decoded):
                what = f"{m.arch} is a classification model" if tasks[i] else \
                    "an ONNX file needs outputs.decoder to be scored on boxes"
                raise ManifestError(f"{source}: dataset.format: {spec.format} needs a detection "
                                    f"model; models[{i}]: {what}")
    if spec.format not in BOX_FORMATS:
        return
    field = "dataset.annotations" if spec.format == "coco" else "dataset.labels"
    try:
        if spec.format == "coco":
            doc = read_coco_document(resolved[field])
            check_coco_document(doc, resolved[field])
        else:
            doc = read_labels(spec.format, resolved["dataset.images"], resolved[field],
                              spec.classes, resolved.get("dataset.data_yaml"), roots)
        check_image_files(doc, resolved["dataset.images"], roots)
        ids = {int(c["id"]) for c in doc["categories"]}
        for i, m in enumerate(manifest.models):
            mapping = m.outputs.category_map if m.outputs is not None else None
            # a torchvision detector's map (a decoded model's is checked when it is scored)
            if isinstance(mapping, dict) and m.outputs.decoder is None:
                unknown = sorted(set(mapping.values()) - ids)
                if unknown:
                    raise ManifestError(f"{source}: models[{i}].outputs.category_map: maps "
                                        f"onto category ids {unknown[:10]} the dataset does "
                                        f"not have (its ids: {sorted(ids)[:20]})")
                absent = sorted(ids - set(mapping.values()))
                if absent:
                    raise ManifestError(f"{source}: models[{i}].outputs.category_map: dataset "
                                        f"category ids {absent[:10]} are absent from the map "
                                        "(no model label would ever score them)")
                continue
            if tasks[i] != "detection" or mapping is not None:
                continue
            classes = (m.num_classes or (len(FIXTURE_CLASSES) + 1 if m.arch == FIXTURE_ARCH
                                         else 91))
            check_coco_document(doc, resolved[field], classes)
    except DatasetError as exc:
        raise ManifestError(f"{source}: {field}: {exc}") from None


def check_job_id(job_id: str) -> str:
    """A job id given by a user (`qbench run --job-id`, `status`): a name, never a path."""
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise ManifestError(f"job id {job_id!r}: letters, digits, '_', '.' and '-' only, "
                            "starting with a letter or digit (it names files)")
    return job_id


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
    try:
        return dt.datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        raise ManifestError(f"job id {job_id!r}: {match.group(1)} is not a date") from None


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
