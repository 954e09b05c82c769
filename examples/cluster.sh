#!/usr/bin/env bash
# A three-edge Burrow cluster on one machine (docs/operators.md, "Run a cluster"): one etcd, three
# `burrow-edge run` on their own ports, a connector on edge 2, and a request through each edge.
# Needs `etcd` on the PATH (Debian: apt-get install etcd-server) and the two binaries in
# $BURROW_BIN (default: target/release; build them with
# `cargo build --release -p burrow-edge -p burrow-connector`).
set -euo pipefail

BIN=${BURROW_BIN:-target/release}
WORK=$(mktemp -d)
export BURROW_HOME="$WORK/home"
cleanup() {
    status=$?
    # On failure, what etcd, the edges and the connector said.
    [ "$status" = 0 ] || tail -n 20 "$WORK"/*.log >&2 || true
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. etcd: one member here; in production three or five, on their own machines.
etcd --name demo --data-dir "$WORK/etcd" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster demo=http://127.0.0.1:23800 \
    --auto-compaction-mode periodic --auto-compaction-retention 1h --max-txn-ops 1024 \
    >"$WORK/etcd.log" 2>&1 &
STORE=etcd://127.0.0.1:23790

# 2. Three edges on the same store; each gets its own ports and data dir. --peer is the
#    inter-edge link (UDP) over which an edge forwards a request for a tunnel connected elsewhere.
for n in 1 2 3; do
    "$BIN/burrow-edge" run --store "$STORE" --node-name "edge$n" --data-dir "$WORK/edge$n" \
        --http "127.0.0.1:1808$n" --https off \
        --tunnel "127.0.0.1:1784$n" --advertise "127.0.0.1:1784$n" \
        --api "127.0.0.1:1909$n" --admin "127.0.0.1:1919$n" \
        --peer "127.0.0.1:1785$n" \
        >"$WORK/edge$n.log" 2>&1 &
done
for n in 1 2 3; do
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:1919$n/ready" >/dev/null && break
        sleep 0.1
    done
done

# 3. An account (on any edge: they share the store), a tunnel and a route, through edge 1's API.
TOKEN=$("$BIN/burrow-edge" account create demo --zone example.test --store "$STORE" |
    sed -n 's/.*keep it secret): //p')
"$BIN/burrow" login --api http://127.0.0.1:19091 --token "$TOKEN"
"$BIN/burrow" tunnel create demo
"$BIN/burrow" tunnel route dns demo app.example.test

# 4. The connector, on edge 2 only (with --ha-connections 4 it would spread over the edges).
"$BIN/burrow" tunnel run demo --url hello_world --edge 127.0.0.1:17842 --ha-connections 1 \
    >"$WORK/connector.log" 2>&1 &

# 5. The tunnel answers through every edge: edges 1 and 3 forward to edge 2.
for n in 1 2 3; do
    for _ in $(seq 100); do
        curl -fs -H 'Host: app.example.test' "http://127.0.0.1:1808$n/" >/dev/null && break
        sleep 0.1
    done
    echo "edge$n: $(curl -fsS -o /dev/null -w '%{http_code}' -H 'Host: app.example.test' "http://127.0.0.1:1808$n/")"
done
"$BIN/burrow" tunnel list
