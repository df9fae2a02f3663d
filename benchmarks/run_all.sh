#!/usr/bin/env bash
# The full benchmark behind benchmarks/README.md: the default grid on padded input and on packed
# input, each with the memory probe, raw numbers and plots in benchmarks/results/.
#
#   benchmarks/run_all.sh                 # backend fast, torch's default thread count
#   benchmarks/run_all.sh --threads 1     # extra options go to every `unrolled bench` call
#
# Run it on an otherwise idle machine: the header of each table records the load average, and the
# noise column flags points whose samples scattered.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT=benchmarks/results
mkdir -p "$OUT"

run() {
    local name="$1"
    shift
    echo "== unrolled bench $* (-> $OUT/$name.*)"
    "$PYTHON" -m unrolled.cli bench "$@" --json "$OUT/$name.json" --plot "$OUT/$name.png" \
        | tee "$OUT/$name.txt"
}

run padded --memory "$@"
run packed --packed --memory "$@"
run padded-reference --backend reference --shapes S,M "$@"
