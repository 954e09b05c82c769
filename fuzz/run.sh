#!/bin/sh
# Run every fuzz target for SECONDS each (default 300). Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal && cargo +nightly install cargo-fuzz
# New inputs go to fuzz/work/<target> (ignored by git); fuzz/seeds/<target> is the seed corpus.
# Crashes are saved under fuzz/artifacts/<target>/ and stop the run with a non-zero exit.
set -eu
SECONDS_EACH="${1:-300}"
cd "$(dirname "$0")"
for target in frame_decode ingress_config tunnels_file request_head pool_spec origin_uri; do
    mkdir -p "work/$target"
    echo "== $target for ${SECONDS_EACH}s"
    cargo +nightly fuzz run --sanitizer none "$target" "work/$target" "seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 2>&1 | tail -n 4
done
