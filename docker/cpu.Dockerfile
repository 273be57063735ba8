# qbench CPU worker: a Celery worker on queue `cpu` (also the image of beat and flower).
#
#   docker build -f docker/cpu.Dockerfile -t qbench-cpu .
#   docker build -f docker/cpu.Dockerfile -t qbench-cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU-only torch, small
#   docker build -f docker/cpu.Dockerfile -t qbench-cpu --network host \
#       --build-arg BASE_IMAGE=qbench-base:bookworm .    # no registry: see docker/base-image.sh
#
# Build arguments (all optional):
#   BASE_IMAGE       any Debian/Ubuntu image; python3 (with venv) is installed with apt when absent
#   TORCH_INDEX_URL  index for torch and torchvision only (same pinned versions as
#                    requirements.txt); empty = the default index (on PyPI that is the CUDA build,
#                    ~5.5 GB of wheels)
#   PIP_INDEX_URL    the index for everything else (default: pip's own, PyPI)
#   EXTRA_PACKAGES   more pip requirements baked in (default: flower, the monitoring UI)
#   QBENCH_UID/GID   the non-root user the image runs as (compose may override with `user:`)
#
# Keep the instructions up to the COPY of the source identical to docker/gpu.Dockerfile: built
# from the same base, both images then share the large dependency layers.
ARG BASE_IMAGE=python:3.11-slim-bookworm
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
    QBENCH_QUEUE=cpu
WORKDIR /srv/qbench
USER qbench

# Alive = the worker on this host answers a control ping (node name <queue>@<hostname>). It runs
# in the worker's cpuset: lowest priority and rare, to stay out of the measurements.
HEALTHCHECK --interval=300s --timeout=30s --start-period=60s --retries=3 \
    CMD nice -n 19 celery -A qbench.service.app inspect ping --timeout 10 -d "$QBENCH_QUEUE@$(cat /proc/sys/kernel/hostname)" >/dev/null || exit 1

CMD ["sh", "-c", "exec celery -A qbench.service.app worker -Q \"$QBENCH_QUEUE\" -c 1 -n \"$QBENCH_QUEUE@%h\" --loglevel INFO"]
