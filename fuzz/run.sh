#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each.
#
#   bash fuzz/run.sh 30                  # every target, 30 s each (what CI does)
#   bash fuzz/run.sh 600 machine         # one target, ten minutes
#
# cargo-fuzz needs libFuzzer's sanitizer flags (-Zsanitizer=address), which
# rustc accepts only on nightly. This machine's one toolchain is stable, so
# the script sets RUSTC_BOOTSTRAP=1, which lets stable rustc take the -Z
# flags (for this build only; the project itself builds on stable without
# it). libfuzzer-sys compiles libFuzzer's C++ with the machine's g++.
# New corpus entries go to fuzz/corpus/<target>/ beside the committed seeds
# (seed-*), and are ignored by git; crashes go to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(machine oauth2_response cache_record discovery config)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: bash .ci/setup installs it" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== fuzz $target for ${seconds}s"
    cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+[[:space:]]+DONE|Done|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==|SUMMARY|thread .* panicked|artifact_prefix|Test unit written)|ERROR' | tail -n 8
    # grep's status is not the fuzzer's; the pipeline's is, through pipefail.
done
