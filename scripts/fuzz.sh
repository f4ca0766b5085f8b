#!/usr/bin/env bash
# Fuzzes refine's input parsing and the model loader for a bounded time each.
# Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Needs the nightly toolchain; installs cargo-fuzz when missing. libFuzzer's
# -malloc_limit_mb turns any single allocation over 256 MiB (far above what
# the seeds need) into a failure, so a header cannot drive an unbounded one.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
for target in refine_input model_loader; do
    mkdir -p "corpus/$target"
    echo "fuzzing $target for ${secs}s"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=20 -print_final_stats=1
done
echo "fuzzing: no crash in ${secs}s per target"
