# Redis from Debian's redis-server package, for machines that cannot pull the public `redis`
# image (no registry): build it on the debootstrap base of docker/base-image.sh.
#
#   docker build --network host --build-arg BASE_IMAGE=qbench-base:bookworm \
#       -f docker/redis.Dockerfile -t qbench-redis:bookworm docker
#
# It behaves like the public image as compose.yaml uses it: `redis-server` and `redis-cli` on
# PATH, a `redis` user, data in /data.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data

WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--dir", "/data", "--bind", "127.0.0.1"]
