#!/bin/sh
# Makes sure libfaketime (Debian's `faketime` package) is installed for the
# clock-step tests (tests/tests/clock_steps.rs), which preload it into a
# worker process to step only that process's wall clock. Idempotent: does
# nothing when it is already installed. Needs root (or sudo) to install.
set -eu

have_lib() {
    for lib in /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 /usr/local/lib/faketime/libfaketime.so.1; do
        if [ -f "$lib" ]; then
            echo "$lib"
            return 0
        fi
    done
    return 1
}

if lib=$(have_lib); then
    echo "setup-faketime: $lib"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-faketime: libfaketime is missing and apt-get is not available; install it by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends faketime
lib=$(have_lib)
echo "setup-faketime: $lib"
