#!/usr/bin/env bash
# Installs panva's oidc-provider (the version pinned in
# tests/oidc/package-lock.json) for the end-to-end tests in
# tests/tests/oauth2_oidc_provider.rs. Idempotent: does nothing when the
# installed tree already matches the lock file.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/oidc" && pwd)"
cd "$dir"

command -v node >/dev/null || { echo "setup-oidc: node is not installed" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup-oidc: npm is not installed" >&2; exit 1; }

# A stamp of the lock file it was installed from tells whether the tree is current.
stamp=node_modules/.freshtoken-lock-sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f node_modules/oidc-provider/package.json ]]; then
    echo "setup-oidc: oidc-provider $(node -p "require('./node_modules/oidc-provider/package.json').version") already installed"
    exit 0
fi

npm ci --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"
echo "setup-oidc: installed oidc-provider $(node -p "require('./node_modules/oidc-provider/package.json').version") (node $(node --version))"
