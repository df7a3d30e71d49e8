#!/usr/bin/env bash
# One-shot GPU check (see benchmarks/gpu_check.py's docstring): CuPy tests,
# NumPy/CuPy float64 parity, timings beside PyTorch CUDA, the paper's run.
#
#   benchmarks/gpu_check.sh OUTDIR                # on the GPU machine, from anywhere
#   benchmarks/gpu_check.sh OUTDIR --rehearse     # CPU rehearsal (or GPU_CHECK_REHEARSE=1)
#   benchmarks/gpu_check.sh OUTDIR --rehearse --quick --skip tests   # the tests' smallest run
#
# Writes OUTDIR/gpu_check.log (everything printed), OUTDIR/gpu_check.json,
# OUTDIR/tests.log and OUTDIR/paper_run.log. The whole wrapper is limited to
# GPU_CHECK_LIMIT_S seconds (default 465: under 8 minutes): the driver runs
# under `timeout` with what the version probe left, and plans its steps to
# end 15 s before that (GPU_CHECK_TOTAL_S); it writes the JSON after every
# step, and on SIGTERM. Changes nothing on the GPU and needs no network.
set -u
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUTDIR [--rehearse] [driver options: python -m benchmarks.gpu_check --help]" >&2
    exit 2
fi
OUT=$1
shift
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TINYGRAD2_BACKEND
PY=${PYTHON:-python}
LIMIT=${GPU_CHECK_LIMIT_S:-465}
START=$SECONDS
LOG="$OUT/gpu_check.log"

{
    echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) =="
    echo "repo: $PWD ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>&1 || echo "nvidia-smi -L failed"
    else
        echo "nvidia-smi: not available"
    fi
    timeout 30 "$PY" - <<'PYEOF' 2>&1 || echo "(version probe failed or timed out)"
import importlib, platform
print(f"python {platform.python_version()} ({platform.python_implementation()})")
for name in ("numpy", "cupy", "torch"):
    try:
        m = importlib.import_module(name)
        extra = ""
        if name == "cupy":
            extra = f", CUDA runtime {m.cuda.runtime.runtimeGetVersion()}"
        if name == "torch":
            extra = f", CUDA {m.version.cuda}, cuda available {m.cuda.is_available()}"
        print(f"{name} {m.__version__}{extra}")
    except Exception as err:
        print(f"{name}: not usable ({type(err).__name__}: {err})")
PYEOF
} 2>&1 | tee "$LOG"

LEFT=$((LIMIT - (SECONDS - START)))
[ "$LEFT" -ge 2 ] || LEFT=2
export GPU_CHECK_TOTAL_S=${GPU_CHECK_TOTAL_S:-$((LEFT > 30 ? LEFT - 15 : LEFT))}
timeout --kill-after=5 "$LEFT" "$PY" -u -m benchmarks.gpu_check --out "$OUT" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check: stopped by the ${LIMIT} s limit (exit $rc); $OUT/gpu_check.json holds the finished steps" | tee -a "$LOG"
fi
echo "gpu_check: exit $rc; log $LOG, figures $OUT/gpu_check.json" | tee -a "$LOG"
exit "$rc"
