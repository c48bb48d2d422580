#!/bin/sh
# Makes sure PostgreSQL's server binaries (initdb, postgres, pg_isready,
# psql) and the `postgres` user are there for the PostgreSQL cache tests,
# which make and start their own clusters in temporary directories on
# loopback ports (as the `postgres` user when run as root: initdb refuses
# root). Idempotent: does nothing when they are already installed. Needs
# root (or sudo) to install.
set -eu

have_pg() {
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_isready" ] && [ -x "$dir/psql" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# runuser (util-linux) runs the server as `postgres`; openssl makes the
# TLS test's certificates.
if bin=$(have_pg) && id postgres >/dev/null 2>&1 \
    && command -v runuser >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    echo "setup-postgres: $("$bin/postgres" --version)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-postgres: PostgreSQL is missing and apt-get is not available; install it by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends postgresql openssl util-linux

# The tests start their own servers; a packaged cluster (if the init system
# started one) is not needed and is left as the package configured it.
bin=$(have_pg)
echo "setup-postgres: $("$bin/postgres" --version)"
