#!/bin/sh
# The Redis Cluster and Sentinel tests (tests/tests/cache_redis_ha.rs and
# the fleet tests in tests/tests/fleet_processes.rs) start their own nodes
# with redis-server (cluster mode, and `redis-server --sentinel`, which is
# what Debian's redis-sentinel package runs) and form the cluster with
# `redis-cli --cluster create`. This makes sure both commands are on PATH.
# Idempotent: does nothing when they are. Needs root (or sudo) to install.
set -eu

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    echo "setup-redis-ha: $(redis-cli --version)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-redis-ha: redis-server or redis-cli is missing and apt-get is not available; install them by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends redis-server redis-tools
echo "setup-redis-ha: $(redis-cli --version)"
