#!/bin/sh
# Makes sure `redis-server` is on PATH for the Redis cache tests, which start
# their own servers on loopback ports and unix sockets. Idempotent: does
# nothing when it is already installed. Needs root (or sudo) to install.
set -eu

# openssl (the command) makes the certificates of the rediss:// test.
if command -v redis-server >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    echo "setup-redis: $(redis-server --version)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-redis: redis-server or openssl is missing and apt-get is not available; install them by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends redis-server openssl

# The tests start their own servers; a packaged service (if the init system
# started one) is not needed and is left as the package configured it.
echo "setup-redis: $(redis-server --version)"
