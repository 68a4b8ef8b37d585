#!/usr/bin/env bash
# Runs the edges a user has running while the tests run, so a test that
# binds their ports fails in CI instead of on a user's machine:
#   .ci/user-edges.sh start   # the README's `fnroute serve` (embedded default,
#                             # 127.0.0.1:5300/4433/9180) and
#                             # `serve --config edge-config/three-edges.toml --all`
#                             # (127.0.0.11-13, same ports)
#   .ci/user-edges.sh stop    # fails if either edge died during the tests
# Uses the debug binary the tests build (target/debug/fnroute); state and
# logs in target/user-edges/.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/user-edges
bin=target/debug/fnroute

wait_port() { # proto host port
    for _ in $(seq 100); do
        if [ "$1" = tcp ] && ss -Hltn "src $2:$3" | grep -q .; then return 0; fi
        if [ "$1" = udp ] && ss -Hlun "src $2:$3" | grep -q .; then return 0; fi
        sleep 0.1
    done
    echo "user-edges: nothing listens on $1 $2:$3" >&2
    return 1
}

case "${1:-}" in
start)
    mkdir -p "$dir"
    cargo build --locked --bin fnroute
    FNROUTE_LOG=warn "$bin" serve > "$dir/local.log" 2>&1 &
    echo $! > "$dir/local.pid"
    FNROUTE_LOG=warn "$bin" serve --config edge-config/three-edges.toml --all > "$dir/three.log" 2>&1 &
    echo $! > "$dir/three.pid"
    for ip in 127.0.0.1 127.0.0.11 127.0.0.12 127.0.0.13; do
        wait_port tcp "$ip" 5300
        wait_port udp "$ip" 5300
        wait_port udp "$ip" 4433
        wait_port tcp "$ip" 9180
    done
    echo "user-edges: local (pid $(cat "$dir/local.pid")) and three-edges (pid $(cat "$dir/three.pid")) serving"
    ;;
stop)
    rc=0
    for n in local three; do
        pid=$(cat "$dir/$n.pid" 2>/dev/null || true)
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "user-edges: the $n edge is not running any more; its log:" >&2
            cat "$dir/$n.log" >&2 || true
            rc=1
        else
            kill -TERM "$pid"
        fi
    done
    for n in local three; do
        pid=$(cat "$dir/$n.pid" 2>/dev/null || true)
        for _ in $(seq 100); do
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$dir/$n.pid"
    done
    exit $rc
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
