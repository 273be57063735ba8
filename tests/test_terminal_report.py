"""What a person sees: the report as terminal tables and file paths, and honest plot axes."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from qbench.report.blocks import Bullets, Heading, Image, Para, Table
from qbench.report.plots import accuracy_limits
from qbench.report.terminal import print_report


def test_terminal_report_has_tables_and_paths_not_markdown(tmp_path):
    blocks = [Heading("qbench report: job-1", 1), Para("1 unit(s) failed: x", alert=True),
              Heading("Latency"),
              Table(["model", "speedup vs fp32"], [["`frcnn`", "**1.52x**"]], {1}),
              Bullets(["frcnn int8_static: `backbone` int8"]),
              Image(Path("latency.png"), "latency and throughput vs batch size")]
    buf = io.StringIO()
    files = [tmp_path / "report.md", tmp_path / "report.html"]
    print_report(blocks, tmp_path, files, Console(file=buf, width=120))
    text = buf.getvalue()
    assert "![" not in text and "](" not in text and "|---" not in text
    assert "`" not in text and "**" not in text
    assert "speedup vs fp32" in text and "1.52x" in text and "frcnn" in text
    assert "qbench report: job-1" in text and "1 unit(s) failed: x" in text
    for path in (*files, tmp_path / "latency.png"):
        assert str(path) in text


def test_accuracy_axis_does_not_turn_a_small_drop_into_a_cliff():
    lo, hi = accuracy_limits([0.883, 0.880])  # a 0.3-point drop
    assert hi - lo >= 0.10 and lo < 0.880 and hi > 0.883
    assert (0.883 - 0.880) / (hi - lo) < 0.05  # under 5% of the axis
    lo, hi = accuracy_limits([0.999, 0.995])
    assert hi == 1.0 and hi - lo >= 0.10  # never past 1
    lo, hi = accuracy_limits([0.01])
    assert lo == 0.0 and hi >= 0.10
    lo, hi = accuracy_limits([0.2, 0.9])  # a wide spread keeps its points inside
    assert lo < 0.2 and hi > 0.9 and lo >= 0 and hi <= 1
