#!/bin/sh
# Makes sure `prometheus` is on PATH for the agent's metrics test
# (agent/tests/agent_prometheus.rs), which starts its own server on a
# loopback port with its own scrape configuration. Idempotent: does nothing
# when it is already installed. Needs root (or sudo) to install.
set -eu

if command -v prometheus >/dev/null 2>&1; then
    echo "setup-prometheus: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-prometheus: prometheus is missing and apt-get is not available; install it by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends prometheus

# The test starts its own server; a packaged service (if the init system
# started one) is not needed and is left as the package configured it.
echo "setup-prometheus: $(prometheus --version 2>&1 | head -n 1)"
