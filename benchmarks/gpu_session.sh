#!/usr/bin/env bash
# Issue 14's GPU session, scripted, so a lent GPU's 30 minutes go to the work
# and not to typing. Run from the repository root on the GPU machine, one step
# per `run` call, back to back (the machine is given back after ~30 s idle):
#
#   bash benchmarks/gpu_session.sh tests      # carry .data/c1: GPU paths under pytest
#   bash benchmarks/gpu_session.sh speed      # carry .data/c2: study_speed --torch, epoch_idle
#   bash benchmarks/gpu_session.sh baseline   # carry .data/c3: the seed preset on real CIFAR-10
#   bash benchmarks/gpu_session.sh baseline   # again, if the first call ran out of time: it resumes
#   bash benchmarks/gpu_session.sh quick      # with time left: `jaxprune study --preset quick`
#
# (.data/c1..c3 are the three pieces of CIFAR-10 that ../shared/GPU.md makes.)
# The GPU image has no hypothesis, which the mask tests use, and no registry:
# carry its wheels (1.2 MB) beside .data/c1 in the first call, made here with
#   pip download hypothesis --python-version 3.12 --only-binary=:all: -d .data/wheels
# Nor has it pandas: the quick study still trains and keeps results.csv, and
# `jaxprune report` makes its report back here.
# Every step first installs jaxprune if needed, gathers whatever data pieces
# arrived into $JAXPRUNE_GPU_DATA, and writes $OUT/device.txt. Each step stops
# itself $JAXPRUNE_GPU_LIMIT_S seconds after it starts (default 540), before the
# tool's 600-s limit, so its outputs always come back: training gets SIGTERM,
# saves its last epoch and exits; the same step run again resumes it.
# Everything to keep lands under $OUT/<step>/, beginning with the command and
# device line, as ../shared/GPU.md asks.
#
# Environment (all optional):
#   OUT                  where results go (default: results/gpu)
#   JAXPRUNE_GPU_DATA    CIFAR-10 root, holding cifar-10-batches-bin/ (default: /root/cifar10)
#   JAXPRUNE_GPU_RUNS    run directories, kept between calls while the machine is warm (default: /root/jaxprune-runs)
#   JAXPRUNE_GPU_LIMIT_S seconds a step may take in all (default: 540)
#   JAXPRUNE_GPU_INSTALL 0 to skip the pip install
#   JAXPRUNE_GPU_TESTS   pytest arguments for `tests` (default: the GPU-path tests below)
#   JAXPRUNE_GPU_SPEED   extra arguments for study_speed.py (e.g. --steps 20)
#   JAXPRUNE_GPU_IDLE    extra arguments for epoch_idle.py (e.g. --epochs 4)
#   JAXPRUNE_GPU_ARGS    extra arguments for `jaxprune train`/`study` in baseline/quick
#                        (e.g. --dtype bfloat16 if float32 would not fit the time)
set -uo pipefail
cd "$(dirname "$0")/.."

step=${1:-}
case "$step" in
  tests|speed|baseline|quick) ;;
  *) echo "usage: bash benchmarks/gpu_session.sh {tests|speed|baseline|quick}" >&2; exit 2 ;;
esac

OUT=${OUT:-results/gpu}
DATA=${JAXPRUNE_GPU_DATA:-/root/cifar10}
RUNS=${JAXPRUNE_GPU_RUNS:-/root/jaxprune-runs}
LIMIT=${JAXPRUNE_GPU_LIMIT_S:-540}
deadline=$(( $(date +%s) + LIMIT ))
mkdir -p "$OUT/$step" "$RUNS"

left() {  # seconds left before this step's deadline, at least 1
  local s=$(( deadline - $(date +%s) )); (( s > 0 )) && echo "$s" || echo 1
}

# `run` tees the command line and its output to $OUT/$step/$1, bounded by the
# step's deadline (SIGTERM, then SIGKILL 30 s later).
run() {
  local log="$OUT/$step/$1"; shift
  { echo "\$ $*"; echo "# $(date -u +%FT%TZ), device: $(cat "$OUT/device.txt" 2>/dev/null | head -1)"; } >>"$log"
  timeout -s TERM -k 30 "$(left)" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "# exit $rc" >>"$log"
  return "$rc"
}

if [ "${JAXPRUNE_GPU_INSTALL:-1}" != 0 ] && ! python3 -c "import jaxprune" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
fi

if [ -d .data/wheels ] && ! python3 -c "import hypothesis" 2>/dev/null; then
  python3 -m pip install -q --no-index --find-links .data/wheels hypothesis || echo "gpu_session: hypothesis not installed" >&2
fi

# Data pieces arrive one per call under .data/c1..c3 (.data/c[0-9]); they accumulate here.
if compgen -G ".data/c[0-9]/*" >/dev/null; then
  mkdir -p "$DATA/cifar-10-batches-bin" && cp .data/c[0-9]/* "$DATA/cifar-10-batches-bin/"
fi

python3 - >"$OUT/device.txt" <<'PY'
import importlib.metadata as md, platform, subprocess
import jax
d = jax.devices()[0]
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
except (OSError, IndexError, subprocess.SubprocessError):
    smi = "no nvidia-smi"
print(f"{d.device_kind} ({d.platform}, {jax.device_count()} device(s)); nvidia-smi: {smi}; "
      f"jax {jax.__version__}, jaxlib {md.version('jaxlib')}; "
      f"python {platform.python_version()}")
PY
cat "$OUT/device.txt"

data_ready() {  # the six .bin files of CIFAR-10, each 30,730,000 bytes (or JAXPRUNE_GPU_ANY_DATA=1)
  local f
  for f in "$DATA"/cifar-10-batches-bin/{data_batch_1,data_batch_2,data_batch_3,data_batch_4,data_batch_5,test_batch}.bin; do
    [ -f "$f" ] || { echo "gpu_session: missing $f" >&2; return 1; }
    if [ "${JAXPRUNE_GPU_ANY_DATA:-0}" != 1 ] && [ "$(stat -c %s "$f")" != 30730000 ]; then
      echo "gpu_session: $f is not 30,730,000 bytes" >&2; return 1
    fi
  done
  ls -l "$DATA/cifar-10-batches-bin" >"$OUT/$step/data.txt"
}

# Copies a run directory's small files (config, metrics, results, report) to $OUT/$step/$2.
keep() {
  local src=$1 dst="$OUT/$step/$2"
  mkdir -p "$dst"
  (cd "$src" && find . -path '*/checkpoints' -prune -o -type f \
    \( -name '*.csv' -o -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.txt' \) -print) |
    while read -r f; do mkdir -p "$dst/$(dirname "$f")" && cp "$src/$f" "$dst/$f"; done
}

rc=0
case "$step" in
  tests)
    # The paths a GPU changes: the selection kernels against numpy sorting, the
    # whole-epoch scan, bfloat16 training, vmapped runs, float64 parity with torch.
    # shellcheck disable=SC2086
    run pytest.txt python3 -m pytest -q -rfE --durations=15 --continue-on-collection-errors \
      --junitxml="$OUT/$step/junit.xml" \
      ${JAXPRUNE_GPU_TESTS:-tests/test_masks.py tests/test_masks_scores.py tests/test_masks_distributions.py \
        tests/test_train.py tests/test_parallel.py tests/test_torch_parity.py} || rc=$?
    ;;
  speed)
    # shellcheck disable=SC2086
    run study_speed.txt python3 benchmarks/study_speed.py --width 64 --dtypes float32 bfloat16 --torch \
      ${JAXPRUNE_GPU_SPEED:-} || rc=$?
    # shellcheck disable=SC2086
    run epoch_idle.txt python3 benchmarks/epoch_idle.py --width 64 --dtype bfloat16 ${JAXPRUNE_GPU_IDLE:-} || rc=$?
    ;;
  baseline)
    data_ready || exit 2
    # shellcheck disable=SC2086
    run train.log jaxprune train --preset seed --data "cifar10-bin:$DATA" --workdir "$RUNS/seed" --no-progress \
      ${JAXPRUNE_GPU_ARGS:-} || rc=$?
    keep "$RUNS/seed" seed
    ;;
  quick)
    data_ready || exit 2
    # shellcheck disable=SC2086
    run study.log jaxprune study --preset quick --data "cifar10-bin:$DATA" --workdir "$RUNS/quick" --no-progress \
      ${JAXPRUNE_GPU_ARGS:-} || rc=$?
    keep "$RUNS/quick" quick
    ;;
esac
echo "gpu_session $step: exit $rc; outputs in $OUT/$step"
exit "$rc"
