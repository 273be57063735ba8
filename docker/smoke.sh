#!/usr/bin/env bash
# Container smoke test: the real stack, end to end, in one command.
#
#   docker/smoke.sh [--keep] [--redis-port N]
#
# 1. engine    use the running Docker engine, or start `dockerd --bridge=none --iptables=false`
#              (root only) and stop it again at the end
# 2. base      pick the base image: qbench-base:bookworm when it exists, else the public
#              python:3.11-slim-bookworm when a registry answers, else build qbench-base with
#              docker/base-image.sh (debootstrap; the host's CA bundle is added, see below)
# 3. build     the cpu image (docker/cpu.Dockerfile) and, without a registry, the Redis image
#              (docker/redis.Dockerfile); later runs reuse the cached layers
# 4. up        compose.yaml + docker/compose.local.yaml (host network): redis, worker-cpu
#              (pinned with cpuset), beat; checks cpuset, non-root user, worker healthcheck
# 5. job       `qbench submit --wait` from the host CLI (.venv/bin/qbench) with a tiny manifest
#              that names a checkpoint and an ImageFolder dataset beside it on the host (paths
#              the containers do not have): submit stages them into results/inputs/; its Parquet rows must appear
#              under the mounted results folder exactly once, with the checkpoint's sha256 and a
#              dataset digest, and `qbench report` must render them
# 6. restart   worker stopped, a job queued, `docker restart` of Redis: the queued job survives
#              (append-only file) and completes once the worker is back, rows exactly once
# 7. teardown  always (trap): compose down -v, the engine if this script started it
#
# Prints each step with its time and the image sizes; the last line is `container smoke: passed`
# or `container smoke: FAILED at <step>: <reason>`. Exit status: 0 passed, 1 failed, 3 this host
# cannot run containers (no docker, no engine and none can be started: steps host and engine),
# 2 bad arguments.
#
# Settings (environment):
#   QBENCH_SMOKE_DIR         [results/container-smoke] work folder, emptied at the start:
#                            results/ (mounted into the containers), jobs/, logs/
#   QBENCH_SMOKE_REDIS_PORT  [6380, or a free port when 6380 is taken] loopback port of Redis;
#                            --redis-port N fails when N is taken
#   QBENCH_SMOKE_BASE        [auto] auto | registry | debootstrap
#   QBENCH_SMOKE_EXTRA_CA    [/etc/ssl/certs/ca-certificates.crt when present] CA bundle added to a
#                            debootstrap base (networks whose TLS proxy re-signs pip downloads);
#                            empty: none
#   QBENCH_TORCH_INDEX_URL   [PyPI] torch index for the cpu image (https://download.pytorch.org/whl/cpu
#                            gives a much smaller image)
#   QBENCH_SMOKE_JOB_TIMEOUT [900] seconds a job may take
#   QBENCH_SMOKE_FAULT       [none] `job`: the job's checkpoint is an empty file, so its units fail
#                            inside the worker (tests the smoke's own failure path)
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1

keep=0
port_arg=
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1; shift ;;
        --redis-port)
            case "${2:-}" in
                ''|*[!0-9]*) echo "container smoke: FAILED at arguments: --redis-port needs a port number"; exit 2 ;;
            esac
            port_arg=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "container smoke: FAILED at arguments: unknown argument $1"; exit 2 ;;
    esac
done

smoke_dir=${QBENCH_SMOKE_DIR:-$repo/results/container-smoke}
project=qbench-smoke
job_timeout=${QBENCH_SMOKE_JOB_TIMEOUT:-900}
extra_ca=${QBENCH_SMOKE_EXTRA_CA-/etc/ssl/certs/ca-certificates.crt}
[ -r "$extra_ca" ] || extra_ca=
base_mode=${QBENCH_SMOKE_BASE:-auto}
venv_bin=$repo/.venv/bin
log_dir=$smoke_dir/logs

t_start=$(date +%s.%N)
step_name=setup
step_t0=$t_start
verdict=
exit_code=1
started_engine_pid=
compose_up=0
engine_log=

# ---- output ---------------------------------------------------------------------------------
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "[smoke $(elapsed "$t_start")s] $*"; }
step() {  # step NAME DESCRIPTION
    step_name=$1
    step_t0=$(date +%s.%N)
    say "step $1: $2"
}
done_step() { say "step $step_name: ok ($(elapsed "$step_t0") s)${1:+ - $1}"; }
fail() {  # fail REASON [LOGFILE]: one line naming the step; the tail of the log before it
    if [ -n "${2:-}" ] && [ -s "$2" ]; then
        echo "---- last lines of $2"
        tail -n 25 "$2"
        echo "----"
    fi
    verdict="container smoke: FAILED at $step_name: $1"
    case "$step_name" in host|engine) exit_code=3 ;; *) exit_code=1 ;; esac
    exit "$exit_code"
}
run_logged() {  # run_logged LOGFILE CMD...: run, output to the log
    local log=$1; shift
    "$@" >>"$log" 2>&1
}

# ---- teardown (always) ------------------------------------------------------------------------
compose_cmd=()
compose() { "${compose_cmd[@]}" -p "$project" -f "$repo/compose.yaml" -f "$repo/docker/compose.local.yaml" "$@"; }

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ "$compose_up" = 1 ]; then
        if [ "$keep" = 1 ]; then
            say "teardown: --keep: the stack stays up (project $project)"
        else
            [ -n "$verdict" ] && [ -d "$log_dir" ] && compose logs --no-color >"$log_dir/compose.log" 2>&1
            say "teardown: compose down"
            compose down -v --remove-orphans >>"$log_dir/teardown.log" 2>&1 \
                || say "teardown: compose down failed (see $log_dir/teardown.log)"
        fi
    fi
    if [ -n "$started_engine_pid" ] && [ "$keep" != 1 ]; then
        say "teardown: stopping the engine this smoke started (pid $started_engine_pid)"
        kill "$started_engine_pid" 2>/dev/null
        for _ in $(seq 1 60); do kill -0 "$started_engine_pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$started_engine_pid" 2>/dev/null; then
            kill -9 "$started_engine_pid" 2>/dev/null
        fi
    fi
    [ -n "${tmp_dir:-}" ] && rm -rf "$tmp_dir"
    if [ -z "$verdict" ]; then
        if [ "$rc" = 0 ]; then verdict="container smoke: passed"
        else verdict="container smoke: FAILED at $step_name: interrupted or exited with status $rc"; fi
    fi
    say "total $(elapsed "$t_start") s"
    echo "$verdict"
    case "$verdict" in *passed) exit 0 ;; *) exit "$exit_code" ;; esac
}
trap teardown EXIT
trap 'fail "interrupted"' INT TERM

tmp_dir=$(mktemp -d /tmp/qbench-smoke.XXXXXX)

# ---- 0. prerequisites -------------------------------------------------------------------------
step settings "work folder $smoke_dir"
# The work folder is emptied: only when it is empty or was made by this script.
if [ -d "$smoke_dir" ] && [ -n "$(ls -A "$smoke_dir")" ] && [ ! -e "$smoke_dir/.qbench-smoke" ]; then
    fail "refusing to empty $smoke_dir: not a folder made by the smoke (set QBENCH_SMOKE_DIR)"
fi
[ -x "$venv_bin/qbench" ] || fail "no host CLI at $venv_bin/qbench (run: make install)"
rm -rf "$smoke_dir"
mkdir -p "$smoke_dir/results" "$smoke_dir/jobs/nightly" "$smoke_dir/models" "$smoke_dir/data" "$log_dir" \
    || fail "cannot create $smoke_dir"
touch "$smoke_dir/.qbench-smoke"
step host "docker on this host"
command -v docker >/dev/null || fail "docker is not installed (Debian: apt-get install docker.io)"

# ---- 1. engine --------------------------------------------------------------------------------
step engine "a running Docker engine"
if docker info >/dev/null 2>&1; then
    done_step "already running"
else
    command -v dockerd >/dev/null || fail "no engine answers and dockerd is not installed"
    [ "$(id -u)" = 0 ] || fail "no engine answers, and starting dockerd needs root"
    engine_log=$log_dir/dockerd.log
    dockerd --bridge=none --iptables=false >"$engine_log" 2>&1 &
    started_engine_pid=$!
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$started_engine_pid" 2>/dev/null || { started_engine_pid=; fail "dockerd exited at start" "$engine_log"; }
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || fail "dockerd did not answer within 30 s" "$engine_log"
    done_step "started dockerd (pid $started_engine_pid)"
fi
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    fail "neither 'docker compose' nor docker-compose is installed"
fi
say "compose: $("${compose_cmd[@]}" version 2>/dev/null | head -n 1)"

# ---- 2. base image ----------------------------------------------------------------------------
step base "base image ($base_mode)"
base_log=$log_dir/base.log
public_base=python:3.11-slim-bookworm
redis_image=
if [ "$base_mode" = auto ] && docker image inspect qbench-base:bookworm >/dev/null 2>&1; then
    base_mode=debootstrap
fi
if [ "$base_mode" = auto ] || [ "$base_mode" = registry ]; then
    if docker image inspect "$public_base" >/dev/null 2>&1 \
        || run_logged "$base_log" timeout 90 docker pull "$public_base"; then
        base_mode=registry
    elif [ "$base_mode" = registry ]; then
        fail "cannot pull $public_base" "$base_log"
    else
        base_mode=debootstrap
    fi
fi
if [ "$base_mode" = registry ]; then
    base_image=$public_base
    redis_image=redis:7-bookworm
    docker image inspect "$redis_image" >/dev/null 2>&1 \
        || run_logged "$base_log" timeout 300 docker pull "$redis_image" \
        || fail "cannot pull $redis_image" "$base_log"
elif [ "$base_mode" = debootstrap ]; then
    base_image=qbench-base:bookworm
    ca_args=()
    [ -n "$extra_ca" ] && ca_args=(--extra-ca "$extra_ca")
    run_logged "$base_log" "$repo/docker/base-image.sh" --if-missing --tag "$base_image" "${ca_args[@]}" \
        || fail "docker/base-image.sh failed" "$base_log"
else
    fail "QBENCH_SMOKE_BASE must be auto, registry or debootstrap, not $base_mode"
fi
done_step "$base_image"

# ---- 3. images --------------------------------------------------------------------------------
step build "cpu image${redis_image:+ (redis: public image)}"
build_log=$log_dir/build.log
# A small build context: only what the image needs (the checkout's .venv/, results/ and data/
# would otherwise be sent to the engine by builders that ignore docker/cpu.Dockerfile.dockerignore).
ctx=$tmp_dir/context
mkdir -p "$ctx"
cp -r requirements.txt pyproject.toml README.md worker "$ctx/" || fail "cannot stage the build context"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
run_logged "$build_log" docker build --force-rm --network host -f "$repo/docker/cpu.Dockerfile" \
    --build-arg BASE_IMAGE="$base_image" --build-arg TORCH_INDEX_URL="${QBENCH_TORCH_INDEX_URL:-}" \
    -t qbench-cpu:latest "$ctx" || fail "docker build of docker/cpu.Dockerfile failed" "$build_log"
if [ -z "$redis_image" ]; then
    redis_image=qbench-redis:bookworm
    run_logged "$build_log" docker build --force-rm --network host -f "$repo/docker/redis.Dockerfile" \
        --build-arg BASE_IMAGE="$base_image" -t "$redis_image" "$repo/docker" \
        || fail "docker build of docker/redis.Dockerfile failed" "$build_log"
fi
done_step
for image in "$base_image" qbench-cpu:latest "$redis_image"; do
    say "image $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
done

# ---- 4. compose up ----------------------------------------------------------------------------
step up "redis, worker-cpu and beat with compose (host network)"
up_log=$log_dir/up.log
port_free() { "$venv_bin/python" -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try: s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError: sys.exit(1)' "$1"; }
if [ -n "$port_arg" ] || [ -n "${QBENCH_SMOKE_REDIS_PORT:-}" ]; then
    redis_port=${port_arg:-$QBENCH_SMOKE_REDIS_PORT}
    port_free "$redis_port" || fail "port $redis_port on 127.0.0.1 is already taken"
else
    redis_port=6380
    port_free "$redis_port" || redis_port=$("$venv_bin/python" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
cores=$(nproc)
if [ "$(id -u)" = 0 ]; then  # root on the host: the containers still run as the image's user
    run_uid=1000; run_gid=1000
    chown "$run_uid:$run_gid" "$smoke_dir/results"
else
    run_uid=$(id -u); run_gid=$(id -g)
fi
password="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
export QBENCH_REDIS_PASSWORD=$password QBENCH_REDIS_PORT=$redis_port \
    QBENCH_REDIS_IMAGE=$redis_image QBENCH_IMAGE=qbench-cpu:latest QBENCH_BASE_IMAGE=$base_image \
    QBENCH_UID=$run_uid QBENCH_GID=$run_gid \
    QBENCH_RESULTS_HOST=$smoke_dir/results QBENCH_JOBS_HOST=$smoke_dir/jobs \
    QBENCH_MODELS_HOST=$smoke_dir/models QBENCH_DATA_HOST=$smoke_dir/data \
    QBENCH_CPUSET=$([ "$cores" -ge 2 ] && echo 1 || echo 0) QBENCH_AUX_CPUSET=0
broker="redis://:$password@127.0.0.1:$redis_port/0"
run_logged "$up_log" compose config -q || fail "compose config rejects compose.yaml + docker/compose.local.yaml" "$up_log"
compose_up=1
run_logged "$up_log" compose up -d --no-build redis worker-cpu beat || fail "compose up failed" "$up_log"
cid() { compose ps -q "$1" 2>/dev/null | head -n 1; }
worker=$(cid worker-cpu); redis=$(cid redis); beat=$(cid beat)
[ -n "$worker" ] && [ -n "$redis" ] && [ -n "$beat" ] || fail "a service has no container" "$up_log"
wait_log() {  # wait_log CONTAINER TEXT SECONDS
    local deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        grep -q "$2" <<<"$(docker logs "$1" 2>&1)" && return 0
        [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] || return 1
        sleep 1
    done
    return 1
}
wait_log "$worker" "ready\." 120 || { docker logs "$worker" >"$log_dir/worker-cpu.log" 2>&1
    fail "worker-cpu did not become ready" "$log_dir/worker-cpu.log"; }
wait_log "$beat" "beat: Starting" 60 || { docker logs "$beat" >"$log_dir/beat.log" 2>&1
    fail "beat did not start" "$log_dir/beat.log"; }
[ "$(docker inspect -f '{{.State.Health.Status}}' "$redis")" = healthy ] || fail "redis is not healthy"
cpuset=$(docker inspect -f '{{.HostConfig.CpusetCpus}}' "$worker")
allowed=$(docker exec "$worker" sh -c 'grep Cpus_allowed_list /proc/self/status' | awk '{ print $2 }')
[ "$cpuset" = "$QBENCH_CPUSET" ] && [ "$allowed" = "$QBENCH_CPUSET" ] \
    || fail "worker-cpu is not pinned to cores $QBENCH_CPUSET (cpuset '$cpuset', allowed '$allowed')"
wuid=$(docker exec "$worker" id -u)
[ "$wuid" != 0 ] || fail "worker-cpu runs as root"
hc=$(docker inspect -f '{{join .Config.Healthcheck.Test " "}}' "$worker" | sed 's/^CMD-SHELL //')
hc_t0=$(date +%s.%N)
docker exec "$worker" sh -c "$hc" >>"$up_log" 2>&1 || fail "the worker healthcheck fails: $hc" "$up_log"
hc_s=$(elapsed "$hc_t0")
wrong=$(docker exec "$redis" sh -c 'redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --no-auth-warning -a wrong ping' 2>&1)
case "$wrong" in *NOAUTH*|*WRONGPASS*) ;; *) fail "redis accepts a wrong password ($wrong)" ;; esac
[ "$(docker exec "$redis" sh -c 'redis-cli -p "$REDIS_PORT" config get appendonly | tail -n 1')" = yes ] \
    || fail "redis runs without its append-only file"
done_step "redis on 127.0.0.1:$redis_port, worker cores $allowed, uid $wuid, healthcheck ${hc_s} s"

# ---- 5. a job from the host CLI ---------------------------------------------------------------
write_manifest() {  # write_manifest NAME MODES(json list) [more lines: the model's, then top-level]
    cat >"$smoke_dir/jobs/$1.yaml" <<EOF
name: $1
models:
  - id: r18
    source: torchvision
    arch: resnet18
    num_classes: 2
    input_size: [64, 64]
${3:-}
quantization:
  modes: $2
  calibration: {images: 4, method: minmax}
benchmark:
  devices: [cpu]
  batch_sizes: [1, 2]
  warmup: 1
  iterations: 2
  threads: 1
EOF
}
# check_rows JOB UNITS [CHECKPOINT]: every expected row exactly once, all ok, and with the
# checkpoint's sha256, a dataset digest and top-1 when a checkpoint is given; prints a summary
check_rows() {
    QBENCH_RESULTS_DIR=$smoke_dir/results "$venv_bin/python" - "$1" "$2" "${3:-}" <<'EOF'
import collections, glob, hashlib, os, sys
import pyarrow.parquet as pq
job, units, ckpt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
root = os.environ["QBENCH_RESULTS_DIR"]
def rows(table):
    files = glob.glob(f"{root}/{table}/date=*/job={job}/*.parquet")
    return files, [r for f in files for r in pq.read_table(f).to_pylist()]
mfiles, models = rows("models")
lfiles, latency = rows("latency")
problems = []
if len(models) != units:
    problems.append(f"{len(models)} models rows, expected {units}")
dup = [k for k, n in collections.Counter(r["unit_id"] for r in models).items() if n > 1]
dup += [k for k, n in collections.Counter((r["unit_id"], r["batch_size"]) for r in latency).items() if n > 1]
if dup:
    problems.append(f"duplicated rows: {dup}")
if len(latency) != units * 2:
    problems.append(f"{len(latency)} latency rows, expected {units * 2}")
bad = [f"{r['mode']}: {r['error']}" for r in models if r["status"] != "ok"]
if bad:
    problems.append("units failed: " + "; ".join(bad))
pinned = ""
if ckpt and models:
    sha = hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    wrong = [r["mode"] for r in models if r["checkpoint_sha256"] != sha or not r["dataset_sha256"]
             or r["top1"] is None]
    if wrong:
        problems.append(f"units without the checkpoint's sha256, a dataset digest or top1: {wrong}")
    pinned = (f"; checkpoint sha256 {sha[:12]}, dataset {str(models[0]['dataset_sha256'])[:12]},"
              " both staged from the host")
if problems:
    print("; ".join(problems))
    sys.exit(1)
owner = os.stat(mfiles[0]).st_uid
print(f"{len(models)} models rows, {len(latency)} latency rows, each once, all ok; files owned by uid {owner}{pinned}")
EOF
}
step job "qbench submit --wait from the host CLI (resnet18 64 px, host checkpoint + dataset, fp32 + int8_static, bs 1,2)"
job_log=$log_dir/job.log
# Inputs beside the manifest, on the host only: only staging can bring them to the worker.
host_inputs=$smoke_dir/jobs/host
"$venv_bin/python" - "$host_inputs" >>"$job_log" 2>&1 <<'EOF' || fail "cannot write the host checkpoint and dataset" "$job_log"
import sys
from pathlib import Path
import numpy as np, torch, torchvision
from PIL import Image
out = Path(sys.argv[1])
(out / "ckpt").mkdir(parents=True)
torch.manual_seed(0)
torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), out / "ckpt" / "r18.pt")
rng = np.random.default_rng(0)
for label in ("circle", "square"):
    (out / "shapes" / label).mkdir(parents=True)
    for i in range(6):
        pixels = rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out / "shapes" / label / f"{i}.png")
EOF
# Two class folders for a two-class model: the folders are its labels, so top-1 is real.
ckpt=$host_inputs/ckpt/r18.pt
[ "${QBENCH_SMOKE_FAULT:-}" = job ] && : >"$ckpt"
write_manifest smoke '[fp32, int8_static]' "    checkpoint: host/ckpt/r18.pt
dataset: {format: imagefolder, images: host/shapes}"
export QBENCH_BROKER_URL=$broker QBENCH_RESULTS_DIR=$smoke_dir/results
run_logged "$job_log" "$venv_bin/qbench" submit "$smoke_dir/jobs/smoke.yaml" --wait \
    --timeout "$job_timeout" --results "$smoke_dir/results"
submit_rc=$?
job1=$(sed -n 's/^submitted job \([^:]*\):.*/\1/p' "$job_log" | tail -n 1)
if [ "$submit_rc" != 0 ]; then
    docker logs "$worker" >"$log_dir/worker-cpu.log" 2>&1
    why=; [ -n "$job1" ] && why=$(check_rows "$job1" 2) && why=
    fail "job ${job1:-(not submitted)} did not complete (qbench submit: status $submit_rc${why:+; $why})" "$job_log"
fi
[ -n "$job1" ] || fail "no job id in the submit output" "$job_log"
summary=$(check_rows "$job1" 2 "$ckpt") || fail "job $job1: $summary"
done_step "$job1: $summary"

step report "qbench report renders the job's rows"
report_log=$log_dir/report.log
run_logged "$report_log" "$venv_bin/qbench" report "$job1" --results "$smoke_dir/results" \
    || fail "qbench report failed" "$report_log"
grep -q int8_static "$report_log" && grep -q fp32 "$report_log" \
    || fail "the report does not show fp32 and int8_static" "$report_log"
[ -s "$smoke_dir/results/reports/$job1/report.md" ] || fail "no report.md for $job1"
done_step "$smoke_dir/results/reports/$job1/report.md"

# ---- 6. Redis restarted with a job queued -----------------------------------------------------
step restart "docker restart of redis with a job queued loses nothing"
restart_log=$log_dir/restart.log
run_logged "$restart_log" compose stop worker-cpu || fail "cannot stop worker-cpu" "$restart_log"
write_manifest queued '[fp32]'
run_logged "$restart_log" "$venv_bin/qbench" submit "$smoke_dir/jobs/queued.yaml" \
    --results "$smoke_dir/results" || fail "submit failed" "$restart_log"
job2=$(sed -n 's/^submitted job \([^:]*\):.*/\1/p' "$restart_log" | tail -n 1)
queued() { docker exec "$redis" sh -c 'redis-cli -p "$REDIS_PORT" llen cpu'; }
before=$(queued)
[ "${before:-0}" -ge 1 ] || fail "no message queued on 'cpu' (llen $before)"
run_logged "$restart_log" docker restart "$redis" || fail "docker restart redis failed" "$restart_log"
for _ in $(seq 1 60); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$redis")" = healthy ] && break
    sleep 1
done
[ "$(docker inspect -f '{{.State.Health.Status}}' "$redis")" = healthy ] || fail "redis not healthy after restart"
after=$(queued)
[ "$after" = "$before" ] || fail "queue 'cpu' held $before message(s) before the restart, $after after"
run_logged "$restart_log" compose start worker-cpu || fail "cannot start worker-cpu" "$restart_log"
QBENCH_RESULTS_DIR=$smoke_dir/results run_logged "$restart_log" timeout "$job_timeout" "$venv_bin/python" - "$job2" <<'EOF' \
    || { docker logs "$worker" >>"$restart_log" 2>&1; fail "job $job2 did not complete after the restart" "$restart_log"; }
import os, sys, time
from pathlib import Path
from qbench.service.submit import job_states
job, root = sys.argv[1], Path(os.environ["QBENCH_RESULTS_DIR"])
while True:
    states = job_states(root, job)
    if states.done:
        print(f"job {job}: {states.describe()}, report {states.report_state}")
        sys.exit(1 if states.failed else 0)
    time.sleep(1)
EOF
summary=$(check_rows "$job2" 1) || fail "job $job2: $summary"
done_step "$before message(s) queued kept across the restart; $job2: $summary"

worker_health=$(docker inspect -f '{{.State.Health.Status}}' "$worker")
say "worker-cpu health: $worker_health (Docker runs the first scheduled check 300 s after the start; the same check passed above)"
say "results: $smoke_dir/results (logs: $log_dir)"
