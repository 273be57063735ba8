# qbench GPU worker: a Celery worker on queue `gpu`, on a CUDA base image.
#
#   docker build -f docker/gpu.Dockerfile -t qbench-gpu .
#   docker run --gpus all ... qbench-gpu            # or compose: `--profile gpu` (worker-gpu)
#
# The torch wheels from PyPI bring their own CUDA runtime, cuDNN and NCCL (torch 2.14.1: CUDA 13),
# so the base only has to provide the NVIDIA container setup; the host needs a driver new enough
# for that CUDA (>= 580 for CUDA 13) and the nvidia-container-toolkit. For an older driver, pick
# the matching wheels, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128.
#
# Build arguments: as docker/cpu.Dockerfile (BASE_IMAGE, TORCH_INDEX_URL, PIP_INDEX_URL,
# EXTRA_PACKAGES, QBENCH_UID/GID). BASE_IMAGE must be a Debian/Ubuntu image: python3 and venv are
# installed with apt when it lacks them (nvidia/cuda images do).
#
# The instructions up to the COPY of the source are the same as in docker/cpu.Dockerfile: on the
# same base (e.g. --build-arg BASE_IMAGE=qbench-base:bookworm to check this file without a GPU)
# the two images share their dependency layers.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=
ARG PIP_INDEX_URL=
ARG EXTRA_PACKAGES="flower>=2.0"
ARG QBENCH_UID=1000
ARG QBENCH_GID=1000

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/qbench/venv \
    PATH=/opt/qbench/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

# python3 + venv; installed with apt when the base lacks them (nvidia/cuda, plain debian/ubuntu).
RUN python3 -m venv "$VIRTUAL_ENV" 2>/dev/null || { \
        rm -rf "$VIRTUAL_ENV" \
        && apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv python3-pip ca-certificates \
        && rm -rf /var/lib/apt/lists/* \
        && python3 -m venv "$VIRTUAL_ENV"; }

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt /opt/qbench/requirements.txt
RUN set -eu; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" \
            $(grep -E '^(torch|torchvision)[=<>~!]' /opt/qbench/requirements.txt); \
    fi; \
    pip install -r /opt/qbench/requirements.txt; \
    if [ -n "$EXTRA_PACKAGES" ]; then pip install $EXTRA_PACKAGES; fi

# The non-root user and the mount points. state/ (beat's schedule) and the home folder are
# writable by any uid, so that compose's `user: ${QBENCH_UID}:${QBENCH_GID}` (your host uid:
# results owned by you) works; results/ is a bind mount of a host folder that uid can write.
# (Ubuntu-based images such as nvidia/cuda ship a user `ubuntu` with uid/gid 1000: replaced.)
RUN set -eu; \
    old_user=$(getent passwd "$QBENCH_UID" | cut -d: -f1); \
    if [ -n "$old_user" ]; then userdel --remove "$old_user" 2>/dev/null || userdel "$old_user"; fi; \
    old_group=$(getent group "$QBENCH_GID" | cut -d: -f1); \
    if [ -n "$old_group" ]; then groupdel "$old_group"; fi; \
    groupadd --gid "$QBENCH_GID" qbench \
    && useradd --uid "$QBENCH_UID" --gid "$QBENCH_GID" --home-dir /home/qbench --create-home \
        --shell /usr/sbin/nologin qbench \
    && mkdir -p /srv/qbench/results /srv/qbench/jobs/nightly /srv/qbench/models /srv/qbench/data \
        /srv/qbench/state \
    && chown -R qbench:qbench /srv/qbench /home/qbench \
    && chmod 1777 /srv/qbench/state /home/qbench

# The package itself, last: a source change rebuilds only these small layers.
COPY pyproject.toml README.md /opt/qbench/src/
COPY worker /opt/qbench/src/worker
RUN pip install --no-deps /opt/qbench/src && rm -rf /opt/qbench/src \
    && python -c "import qbench.service.app, qbench.service.tasks" \
    && qbench --help >/dev/null

ENV HOME=/home/qbench \
    MPLCONFIGDIR=/tmp/matplotlib \
    QBENCH_RESULTS_DIR=/srv/qbench/results \
    QBENCH_NIGHTLY_DIR=/srv/qbench/jobs/nightly \
    QBENCH_DATA_ROOTS=/srv/qbench/models:/srv/qbench/data:/srv/qbench/jobs \
    QBENCH_QUEUE=gpu \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /srv/qbench
USER qbench

# Alive = the worker on this host answers a control ping (node name <queue>@<hostname>). It runs
# in the worker's cpuset: lowest priority and rare, to stay out of the measurements.
HEALTHCHECK --interval=300s --timeout=30s --start-period=60s --retries=3 \
    CMD nice -n 19 celery -A qbench.service.app inspect ping --timeout 10 -d "$QBENCH_QUEUE@$(cat /proc/sys/kernel/hostname)" >/dev/null || exit 1

CMD ["sh", "-c", "exec celery -A qbench.service.app worker -Q \"$QBENCH_QUEUE\" -c 1 -n \"$QBENCH_QUEUE@%h\" --loglevel INFO"]
