#!/usr/bin/env bash
# Build a Debian base image with debootstrap, for machines that cannot pull from an image registry.
#
#   docker/base-image.sh [--tag qbench-base:bookworm] [--suite bookworm]
#                        [--mirror http://deb.debian.org/debian] [--extra-ca FILE]
#                        [--if-missing]
#
# The image holds Debian's minbase plus python3, python3-venv, python3-pip and ca-certificates
# (about 45 s and ~150 MB). Use it with any qbench Dockerfile:
#
#   docker build --build-arg BASE_IMAGE=qbench-base:bookworm -f docker/cpu.Dockerfile .
#
# --extra-ca FILE  adds a PEM bundle (one or more certificates) to the image's trusted CAs, for
#                  networks whose TLS proxy re-signs downloads (e.g. pip inside `docker build`).
#                  Off by default; also read from QBENCH_BASE_EXTRA_CA. The certificates go to
#                  /usr/local/share/ca-certificates/qbench-extra.crt and into the system bundle
#                  /etc/ssl/certs/ca-certificates.crt that pip, requests and OpenSSL read.
# --if-missing     do nothing when the tag already exists.
#
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker engine.
set -euo pipefail

tag=qbench-base:bookworm
suite=bookworm
mirror=http://deb.debian.org/debian
extra_ca=${QBENCH_BASE_EXTRA_CA:-}
if_missing=0

die() { echo "base-image: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --suite) suite=${2:?--suite needs a value}; shift 2 ;;
        --mirror) mirror=${2:?--mirror needs a value}; shift 2 ;;
        --extra-ca) extra_ca=${2:?--extra-ca needs a file}; shift 2 ;;
        --if-missing) if_missing=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd first)"
if [ "$if_missing" = 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base-image: $tag exists, kept"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
if [ -n "$extra_ca" ]; then
    [ -r "$extra_ca" ] || die "--extra-ca: cannot read $extra_ca"
    grep -q 'BEGIN CERTIFICATE' "$extra_ca" || die "--extra-ca: $extra_ca holds no PEM certificate"
fi

root=$(mktemp -d /tmp/qbench-base.XXXXXX)
cleanup() { rm -rf --one-file-system "$root"; }
trap cleanup EXIT

echo "base-image: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -5 "$root.log" >&2; rm -f "$root.log"; die "debootstrap failed"; }
rm -f "$root.log"

if [ -n "$extra_ca" ]; then
    install -m 0644 "$extra_ca" "$root/usr/local/share/ca-certificates/qbench-extra.crt"
    # update-ca-certificates keeps it on later runs; append now so the bundle has it at once.
    cat "$extra_ca" >>"$root/etc/ssl/certs/ca-certificates.crt"
fi

# Smaller image: no package lists, caches or docs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
# Keep apt usable inside derived images (redis.Dockerfile runs apt-get update).
echo "deb $mirror $suite main" >"$root/etc/apt/sources.list"

tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$tag" >/dev/null
echo "base-image: built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
