#!/usr/bin/env bash
# The full benchmark behind benchmarks/README.md: the default grid on padded input and on packed
# input, each with the memory probe, raw numbers and plots in benchmarks/results/<machine>/,
# where <machine> names the CPU and the fused engine's vector code (e.g.
# amd-epyc-avx-512): one set of results per kind of CPU.
#
#   benchmarks/run_all.sh                 # backend fast, torch's default thread count
#   benchmarks/run_all.sh --threads 1     # extra options go to every `unrolled bench` call
#   RESULTS=my-laptop benchmarks/run_all.sh   # another folder name
#
# Run it on an otherwise idle machine: the header of each table records the load average, and the
# noise column flags points whose samples scattered.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [ -z "${RESULTS:-}" ]; then
    RESULTS="$("$PYTHON" - <<'PY'
import re
from unrolled.fast import native
from unrolled.tools import benchmark
native.ops()
name = f"{benchmark.cpu_model()} {native.engine_instruction_set() or 'python-loops'}"
print(re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(R\)|\(TM\)|Processor", "", name).lower()).strip("-"))
PY
)"
fi
OUT="benchmarks/results/$RESULTS"
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
"$PYTHON" benchmarks/word_language_model.py | tee "$OUT/word_language_model.txt"
