import datetime as dt

import pytest
import yaml

from qbench.manifest import (
    ManifestError,
    job_date_of,
    load_manifest,
    parse_manifest,
    resolve_inside,
)
from qbench.orchestrate import plan_job
from tests.helpers import small_manifest

EXAMPLE = """
name: frcnn-traffic
models:
  - id: frcnn_r50
    source: torchvision
    arch: fasterrcnn_resnet50_fpn
    num_classes: 5
    input_size: [800, 800]
quantization:
  modes: [fp32, int8_static]
  calibration: {images: 64, method: histogram, per_channel: true}
  keep_float: []
benchmark:
  devices: [cpu]
  batch_sizes: [1, 2, 4, 32, 64]
  warmup: 5
  iterations: 30
  threads: 4
inspect: {images: 4, layers: conv}
"""


def test_design_example_parses():
    m = parse_manifest(EXAMPLE)
    assert m.models[0].input_size == (800, 800)
    assert m.quantization.calibration.method == "histogram"
    assert m.benchmark.batch_sizes == [1, 2, 4, 32, 64]


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["benchmark"].update(batch_sizes=[1, 0]), "benchmark.batch_sizes"),
    (lambda d: d["quantization"].update(modes=["int3"]), "quantization.modes"),
    (lambda d: d["models"][0].pop("arch"), "models[0]"),
    (lambda d: d["models"][0].update(colour="red"), "models[0].colour"),
    (lambda d: d.pop("name"), "name"),
    (lambda d: d["benchmark"].update(devices=["tpu"]), "benchmark.devices[0]"),
    (lambda d: d["benchmark"].update(iterations=0), "benchmark.iterations"),
])
def test_bad_fields_name_the_field(edit, field):
    doc = yaml.safe_load(EXAMPLE)
    edit(doc)
    with pytest.raises(ManifestError) as err:
        parse_manifest(yaml.safe_dump(doc), "m.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"m.yaml: {field}")


def test_mode_that_does_not_run_on_device_is_a_validation_error():
    doc = yaml.safe_load(EXAMPLE)
    doc["quantization"]["modes"] = ["fp16"]
    with pytest.raises(ManifestError, match="fp16 does not run on cpu"):
        parse_manifest(yaml.safe_dump(doc))
    doc["quantization"]["modes"] = ["int8_static"]
    doc["benchmark"]["devices"] = ["cuda"]
    with pytest.raises(ManifestError, match="int8_static does not run on cuda"):
        parse_manifest(yaml.safe_dump(doc))


def test_bad_yaml_names_line():
    with pytest.raises(ManifestError, match=r"bad.yaml: line \d+ is not valid YAML"):
        parse_manifest("name: x\nmodels: [\n", "bad.yaml")


def test_missing_files_and_escapes(tmp_path):
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifest(tmp_path / "nope.yaml")
    path = small_manifest(tmp_path, models=[{"id": "m", "arch": "resnet18",
                                             "checkpoint": "weights/missing.pt"}])
    with pytest.raises(ManifestError, match=r"models\[0\].checkpoint: file not found"):
        load_manifest(path)
    path = small_manifest(tmp_path, models=[{"id": "m", "arch": "resnet18",
                                             "checkpoint": "../../etc/passwd"}])
    with pytest.raises(ManifestError, match="outside the allowed roots"):
        load_manifest(path)


def test_resolve_inside_allows_configured_roots(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    base = tmp_path / "jobs"
    assert resolve_inside(str(root / "x.pt"), base, [root.resolve()]) == (root / "x.pt").resolve()
    with pytest.raises(ManifestError):
        resolve_inside(str(root / "x.pt"), base, [])


def test_units_have_stable_ids(tmp_path):
    path = small_manifest(tmp_path)
    when = dt.datetime(2026, 11, 25, 2, 0, 0)
    a = plan_job(path, now=when)
    b = plan_job(path, now=when)
    assert [u.unit_id for u in a.units] == [u.unit_id for u in b.units]
    assert len({u.unit_id for u in a.units}) == len(a.units) == 2
    assert {u.mode for u in a.units} == {"fp32", "int8_static"}
    assert all(u.job_date == "2026-11-25" for u in a.units)
    later = plan_job(path, now=when + dt.timedelta(seconds=1))
    assert later.job_id != a.job_id, "an ad-hoc rerun is a new job"


def test_nightly_job_id_is_the_date(tmp_path):
    path = small_manifest(tmp_path)
    first = plan_job(path, nightly=True, now=dt.datetime(2026, 11, 25, 2, 0))
    again = plan_job(path, nightly=True, now=dt.datetime(2026, 11, 25, 23, 59))
    assert first.job_id == again.job_id
    assert "nightly-20261125" in first.job_id
    assert job_date_of(first.job_id) == dt.date(2026, 11, 25)


def test_unit_roundtrips_through_json(tmp_path):
    from qbench.manifest import Unit

    unit = plan_job(small_manifest(tmp_path)).units[0]
    again = Unit.model_validate_json(unit.model_dump_json())
    assert again == unit
    assert unit.queue == "cpu"
