import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qbench.results import LATENCY, MODELS, read_table, unit_file, write_rows


def latency_row(unit_id: str, bs: int, p50: float) -> dict:
    return {"job_id": "job-20261125T010203-abcdef", "unit_id": unit_id, "model_id": "m",
            "mode": "fp32", "device": "cpu", "batch_size": bs, "latency_ms_p50": p50,
            "status": "ok"}


def test_write_read_roundtrip_with_pyarrow_duckdb_polars(tmp_path):
    job = "job-20261125T010203-abcdef"
    write_rows(tmp_path, "latency", "2026-11-25", job, "u1",
               [latency_row("u1", 1, 10.0), latency_row("u1", 2, 18.0)])
    write_rows(tmp_path, "latency", "2026-11-25", job, "u2", [latency_row("u2", 1, 5.0)])
    table = read_table(tmp_path, "latency", job)
    assert table.schema == LATENCY
    assert sorted(table.column("latency_ms_p50").to_pylist()) == [5.0, 10.0, 18.0]

    import duckdb
    import polars as pl

    glob = str(tmp_path / "latency" / "*" / "*" / "*.parquet")
    got = duckdb.sql(f"select unit_id, sum(batch_size) from read_parquet('{glob}') "
                     "group by unit_id order by unit_id").fetchall()
    assert got == [("u1", 3), ("u2", 1)]
    frame = pl.read_parquet(glob)
    assert frame.height == 3 and "throughput_ips" in frame.columns


def test_rewrite_replaces_never_duplicates(tmp_path):
    job = "j-20261125T010203-abcdef"
    for p50 in (10.0, 11.0, 12.0):
        write_rows(tmp_path, "latency", "2026-11-25", job, "u1", [latency_row("u1", 1, p50)])
    table = read_table(tmp_path, "latency", job)
    assert table.num_rows == 1
    assert table.column("latency_ms_p50").to_pylist() == [12.0]
    leftovers = [p.name for p in unit_file(tmp_path, "latency", "2026-11-25", job, "u1").parent.iterdir()]
    assert leftovers == ["u1.parquet"]


def test_bad_rows_write_nothing(tmp_path):
    with pytest.raises(KeyError, match="unknown columns"):
        write_rows(tmp_path, "latency", "2026-11-25", "j", "u1", [{"job_id": "j", "latncy": 1}])
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_rows(tmp_path, "latency", "2026-11-25", "j", "u1",
                   [{"job_id": "j", "batch_size": "not a number"}])
    assert not any(tmp_path.rglob("*.parquet"))
    assert not any(tmp_path.rglob("*.tmp"))


def test_schema_keeps_public_columns():
    design = ["job_id", "unit_id", "model_id", "arch", "mode", "backend", "device", "batch_size",
              "input_h", "input_w", "warmup", "iterations", "latency_ms_p50", "latency_ms_p90",
              "latency_ms_p99", "latency_ms_mean", "latency_ms_std", "latency_ms_min",
              "throughput_ips", "rss_peak_bytes", "cuda_max_allocated_bytes",
              "cuda_max_reserved_bytes", "nvml_used_peak_bytes", "status", "error",
              "torch_version", "torchvision_version", "qbench_version", "cpu_model", "gpu_name",
              "gpu_driver", "threads", "host"]
    assert set(design) <= set(LATENCY.names)
    for col in ["size_bytes", "fp32_size_bytes", "size_reduction", "map", "map50", "map_fp32",
                "count_error_mean", "count_error_std", "status", "error", "started_at", "ended_at"]:
        assert col in MODELS.names


def test_empty_dataset_reads_as_empty_table(tmp_path):
    assert read_table(tmp_path, "models").num_rows == 0
    assert read_table(tmp_path, "models").schema == MODELS


def test_files_are_valid_parquet(tmp_path):
    path = write_rows(tmp_path, "latency", "2026-11-25", "j", "u9", [latency_row("u9", 4, 1.5)])
    assert pq.read_metadata(path).num_rows == 1
