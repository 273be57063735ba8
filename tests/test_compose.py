"""compose.yaml, its overrides and the Dockerfiles: invariants checked without a container engine.

The stack itself runs in docker/smoke.sh (a real engine, real images); these tests keep the files
honest on every machine, and validate them with `docker-compose config` / `docker compose config`
where those are installed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose.yaml"
LOCAL = REPO / "docker" / "compose.local.yaml"
PORTS = REPO / "docker" / "compose.ports.yaml"
CORES = REPO / "docker" / "compose.cores.yaml"
DOCKERFILES = {q: REPO / "docker" / f"{q}.Dockerfile" for q in ("cpu", "gpu")}
QBENCH_SERVICES = ("worker-cpu", "worker-gpu", "beat", "flower")
MOUNTS = {"/srv/qbench/results", "/srv/qbench/jobs", "/srv/qbench/models", "/srv/qbench/data"}
DEFAULT_PASSWORD = "${QBENCH_REDIS_PASSWORD:-qbench-dev}"
# Service keys that docker-compose 1.29 and compose v2 both understand (and that we use).
SHARED_SERVICE_KEYS = {"image", "build", "command", "environment", "volumes", "user", "cpuset",
                       "healthcheck", "depends_on", "restart", "profiles", "deploy", "working_dir",
                       "stop_grace_period", "network_mode", "ports"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else cmd.split()


def option(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def targets(service: dict) -> dict[str, str]:
    """Container path -> mount mode ('rw' or 'ro') of a service's volumes (short syntax)."""
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        # source:target[:mode]; the source may hold ${VAR:-default} with its own colon
        mode = parts[-1] if parts[-1] in {"ro", "rw"} else "rw"
        target = parts[-2] if parts[-1] in {"ro", "rw"} else parts[-1]
        out[target] = mode
    return out


def test_services_and_shared_subset(compose, services):
    assert set(services) == {"redis", "worker-cpu", "worker-gpu", "beat", "flower"}
    # `version` and `name` are where 1.29 and v2 disagree; keep both out.
    assert set(compose) <= {"services", "volumes"} | {k for k in compose if k.startswith("x-")}
    for name, service in services.items():
        assert set(service) <= SHARED_SERVICE_KEYS, (name, set(service) - SHARED_SERVICE_KEYS)
        assert "networks" not in service and "container_name" not in service, name


def test_redis_password_appendonly_healthcheck_volume(compose, services):
    redis = services["redis"]
    text = " ".join(command(redis))
    assert "--appendonly yes" in text
    assert "requirepass" in text and "$$REDIS_PASSWORD" in text
    assert redis["environment"]["REDIS_PASSWORD"] == DEFAULT_PASSWORD
    assert redis["environment"]["REDISCLI_AUTH"] == DEFAULT_PASSWORD  # healthcheck, not argv
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-data" in compose["volumes"]
    assert redis["user"] != "root"


def test_workers_queues_concurrency_and_cpuset(services):
    for queue in ("cpu", "gpu"):
        cmd = command(services[f"worker-{queue}"])
        assert cmd[:4] == ["celery", "-A", "qbench.service.app", "worker"]
        assert option(cmd, "-Q") == queue
        assert option(cmd, "-c") == "1", "one unit at a time: measurements never share cores"
        assert option(cmd, "-n").startswith(f"{queue}@"), "the healthcheck pings this node name"
        test = " ".join(services[f"worker-{queue}"]["healthcheck"]["test"])
        assert "inspect ping" in test and f"-d {queue}@" in test
    assert services["worker-cpu"]["cpuset"] == "${QBENCH_CPUSET:-1}"
    aux = {services[s].get("cpuset") for s in ("redis", "beat", "flower")}
    assert aux == {"${QBENCH_AUX_CPUSET:-0}"}, "helpers stay off the measurement cores"


def test_gpu_reservation(services):
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/gpu.Dockerfile"
    assert "nvidia/cuda" in gpu["build"]["args"]["BASE_IMAGE"]


def test_beat_and_flower(services):
    beat = command(services["beat"])
    assert beat[:4] == ["celery", "-A", "qbench.service.app", "beat"]
    schedule = option(beat, "-s")
    assert any(schedule.startswith(t + "/") for t, m in targets(services["beat"]).items()
               if m == "rw"), "beat's schedule must be on a writable volume"
    assert services["flower"]["profiles"] == ["monitoring"]
    assert "flower" in command(services["flower"])


def test_qbench_services_volumes_env_and_user(services):
    for name in ("worker-cpu", "worker-gpu", "beat"):
        service = services[name]
        mounts = targets(service)
        assert set(mounts) >= MOUNTS, name
        assert mounts["/srv/qbench/results"] == "rw"
        assert all(mounts[m] == "ro" for m in MOUNTS - {"/srv/qbench/results"}), name
    for name in QBENCH_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["QBENCH_RESULTS_DIR"] == "/srv/qbench/results"
        assert env["QBENCH_BROKER_URL"] == f"redis://:{DEFAULT_PASSWORD}@redis:6379/0"
        assert set(env["QBENCH_DATA_ROOTS"].split(":")) >= {"/srv/qbench/models", "/srv/qbench/data"}
        assert service["user"] == "${QBENCH_UID:-1000}:${QBENCH_GID:-1000}", "non-root, host uid"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_no_secret_but_the_documented_dev_default():
    for path in (COMPOSE, LOCAL, PORTS, CORES, *DOCKERFILES.values()):
        text = path.read_text()
        for match in re.finditer(r"redis://:([^@]*)@", text):
            assert match.group(1) == DEFAULT_PASSWORD, (path.name, match.group(0))
        assert not re.search(r"(?i)(token|secret|api_key)\s*[:=]", text), path.name
    words = " ".join(COMPOSE.read_text().replace("#", " ").split())
    assert "The default is for local development only" in words


def test_only_loopback_addresses():
    files = [COMPOSE, LOCAL, PORTS, CORES, *(REPO / "docker").glob("*.Dockerfile"),
             *(REPO / "docker").glob("*.sh")]
    for path in files:
        for literal in re.findall(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])", path.read_text()):
            try:
                address = ipaddress.ip_address(literal)
            except ValueError:
                continue  # a version number such as 13.0.2.1
            assert address.is_loopback or address.is_unspecified, (path.name, literal)
    for spec in load(PORTS)["services"]["redis"]["ports"] + load(PORTS)["services"]["flower"]["ports"]:
        assert spec.startswith("127.0.0.1:"), spec


def test_local_override_is_host_network_only(services):
    local = load(LOCAL)["services"]
    assert set(local) == set(services), "every service runs on the host network"
    for name, service in local.items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service and "networks" not in service, name
        assert set(service) <= SHARED_SERVICE_KEYS, name
    for name in QBENCH_SERVICES:
        url = local[name]["environment"]["QBENCH_BROKER_URL"]
        assert url.startswith(f"redis://:{DEFAULT_PASSWORD}@127.0.0.1:"), name
    assert local["redis"]["environment"]["REDIS_BIND"] == "127.0.0.1"
    for name in ("worker-cpu", "beat", "flower"):
        assert local[name]["build"]["network"] == "host"
    # docker-compose 1.29 refuses published ports next to network_mode: host, and an override
    # cannot remove them: compose.yaml itself publishes nothing.
    assert all("ports" not in s for s in services.values())


def test_cores_override_pins_one_worker_per_core(services):
    cores = load(CORES)["services"]
    workers = {"worker-cpu": services["worker-cpu"], **cores}
    names = {option(command(w), "-n") for w in workers.values()}
    cpusets = {w["cpuset"] for w in workers.values()}
    assert len(names) == len(cpusets) == len(workers), "distinct node names and cores"
    for name, worker in cores.items():
        cmd = command(worker)
        assert option(cmd, "-Q") == "cpu" and option(cmd, "-c") == "1", name
        assert option(cmd, "-n").split("@")[0] in " ".join(worker["healthcheck"]["test"]), name
        assert set(targets(worker)) >= MOUNTS and "ports" not in worker, name
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_dockerignore_keeps_the_context_small():
    for queue in DOCKERFILES:
        lines = (REPO / "docker" / f"{queue}.Dockerfile.dockerignore").read_text().splitlines()
        rules = [ln for ln in lines if ln and not ln.startswith("#")]
        assert rules[0] == "*", "allow-list: .venv/, results/, data/ never reach the engine"
        assert {"!requirements.txt", "!pyproject.toml", "!README.md", "!worker/"} <= set(rules)


def test_dockerfiles():
    instructions = {}
    for queue, path in DOCKERFILES.items():
        text = path.read_text()
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert lines[0].startswith("ARG BASE_IMAGE=") and lines[1] == "FROM ${BASE_IMAGE}", path.name
        assert "ARG TORCH_INDEX_URL" in text
        assert re.search(r"^USER qbench$", text, re.M), "runs as a non-root user"
        assert "HEALTHCHECK" in text and f"QBENCH_QUEUE={queue}" in text
        # dependencies are installed before the source is copied (layer cache)
        assert text.index("pip install -r /opt/qbench/requirements.txt") < text.index("COPY worker")
        assert "requirements.txt" in text
        start = next(i for i, ln in enumerate(lines) if ln.startswith("ARG TORCH_INDEX_URL"))
        end = next(i for i, ln in enumerate(lines) if ln.startswith("COPY pyproject.toml"))
        instructions[queue] = lines[start:end]
    assert instructions["cpu"] == instructions["gpu"], "shared dependency layers"
    assert "nvidia/cuda" in DOCKERFILES["gpu"].read_text().split("ARG BASE_IMAGE=")[1].split()[0]


def test_smoke_script_parses():
    for script in ("smoke.sh", "base-image.sh"):
        path = REPO / "docker" / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        subprocess.run([shellcheck, "-S", "error", str(REPO / "docker" / "smoke.sh"),
                        str(REPO / "docker" / "base-image.sh")], check=True)


# ---- the real compose tools, where installed -------------------------------------------------

def _compose_tools() -> list[list[str]]:
    tools = []
    if shutil.which("docker-compose"):
        tools.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            tools.append(["docker", "compose"])
    return tools


TOOLS = _compose_tools()
FILE_SETS = {
    "default": [COMPOSE],
    "ports": [COMPOSE, PORTS],
    "local": [COMPOSE, LOCAL],
    "cores": [COMPOSE, PORTS, CORES],
}


@pytest.mark.skipif(not TOOLS, reason="neither docker-compose nor `docker compose` is installed")
@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: " ".join(t))
@pytest.mark.parametrize("files", list(FILE_SETS), ids=str)
def test_compose_config_validates(tool, files, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QBENCH_", "COMPOSE_"))}
    env["QBENCH_REDIS_PASSWORD"] = "from-env"
    args = [*tool, "--project-directory", str(REPO)]
    for f in FILE_SETS[files]:
        args += ["-f", str(f)]
    args += ["--profile", "gpu", "--profile", "monitoring", "config"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    merged = yaml.safe_load(out.stdout)["services"]
    expected = {"redis", "worker-cpu", "worker-gpu", "beat", "flower"}
    if files == "cores":
        expected |= {"worker-cpu-2", "worker-cpu-3"}
    assert set(merged) == expected
    assert "from-env" in merged["worker-cpu"]["environment"]["QBENCH_BROKER_URL"]
    devices = merged["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    if files == "local":
        assert {s.get("network_mode") for s in merged.values()} == {"host"}
        assert all("ports" not in s for s in merged.values())
    if files == "ports":
        assert any("127.0.0.1" in str(p) for p in merged["redis"]["ports"])
