#!/usr/bin/env bash
# Issue 35's GPU session, scripted: three calls, back to back, each under four
# minutes of work, so that a lent GPU's 15 minutes of device time (counted from
# the machine's start, a minute or more of start-up and any idle included) go to
# measurements and not to typing. Make the three CIFAR-10 pieces first, here,
# as ../shared/GPU.md says (.data/c1, .data/c2, .data/c3; .data/ is git-ignored),
# then, from the repository root, with the device tool, one call right after the
# other (the machine is given back ~30 s after a call ends, and a fresh one
# starts bare):
#
#   run(command="bash benchmarks/gpu_session.sh speed",    carry=[".data/c1"], timeout_s=270)
#   run(command="bash benchmarks/gpu_session.sh tests",    carry=[".data/c2"], timeout_s=270)
#   run(command="bash benchmarks/gpu_session.sh baseline", carry=[".data/c3"], timeout_s=270)
#
# Budget: ~1.5 min start + 3 x (220 s + transfers) = ~13.5 of the 15 minutes.
# Each step stops itself JAXPRUNE_GPU_LIMIT_S seconds (default 220) after it
# starts, outputs packed; timeout_s=270 is only the tool's backstop.
#
#   speed     benchmarks/gpu_speed.py, one process printing each figure as it is
#             taken, bfloat16 first, then float32: images/s of one masked
#             ResNet18 run at width 64, the masking overhead (A/B), 2 and 6 runs
#             vmapped, PyTorch's reference on the same GPU (torch_reference.py),
#             and for bf16 one short jax.profiler trace of 1 run and of 6
#             vmapped, summarised (profile_summary.py: top kernels, cuDNN/cuBLAS
#             against XLA's own, and whether the vmapped (grouped) convolutions
#             run as grouped cuDNN kernels or were expanded into dense ones);
#             then device idle between epochs (epoch_idle.py, bf16, 4 epochs).
#             gpu_speed.py has until 72% of the step's time, epoch_idle.py the
#             rest (with whatever gpu_speed.py left). study_speed.py measures
#             more (FLOP rates, evaluation, the study's projection) but compiles
#             twice as often and prints only at the end of each dtype: too slow
#             a start for four minutes.
#   tests     the GPU paths under pytest, most important first: the selection
#             kernels, torch's counts, the whole-epoch scan, bfloat16, vmapped
#             runs, float64 parity with torch (see TESTS below). At the deadline
#             pytest gets SIGINT, so it still prints its summary and junit.xml.
#   baseline  the seed preset's baseline on the real CIFAR-10 in bfloat16, for as
#             many of its 90 epochs as fit: SIGTERM JAXPRUNE_GPU_GRACE_S before
#             the step's end, the trainer saves the epoch in flight and exits 143
#             (a success here). Needs all six .bin files of 30,730,000 bytes: the
#             pieces of the two calls before accumulate in $JAXPRUNE_GPU_DATA on
#             the warm machine; on a fresh machine it says so in one line and
#             exits 2. Run again on the same warm machine, it resumes.
#
# What comes back: $OUT/device.txt, $OUT/<step>.tar.gz (every log, the run
# directory without its checkpoints, the profile summary and traces; any file
# over 4 MiB is left out and named in left_out.txt) and $OUT/<step>-summary.txt
# (the figures, also printed last). Before it exits the script checks $OUT
# against what the tool brings back (at most 8 files of at most 16 MiB, no
# deeper than $OUT/a/b/file, names of letters, digits, `.`, `_`, `-`) and exits
# 3, loudly, if it does not fit. Record the figures under results/ as
# ../shared/GPU.md says.
#
# The GPU image should have pytest, hypothesis, pandas and torch (GPU.md). If
# hypothesis is missing, carry its wheels with the tests call (1.2 MB; c2 plus
# the checkout still fit the 64 MiB), made here with
#   pip download hypothesis --python-version 3.12 --only-binary=:all: -d .data/wheels
#   run(command="bash benchmarks/gpu_session.sh tests", carry=[".data/c2", ".data/wheels"], timeout_s=270)
# without them the mask tests fail to collect and the others still run.
#
# Exit status: 0 done (a command stopped by the deadline counts: see the
# summary), 1 a command failed, 2 usage or missing data, 3 $OUT does not fit.
#
# Environment (all optional):
#   OUT                   where results go (the device tool sets it; default results/gpu)
#   JAXPRUNE_GPU_DATA     CIFAR-10 root, holding cifar-10-batches-bin/ (default /root/cifar10)
#   JAXPRUNE_GPU_RUNS     run directories and XLA's compilation cache, kept while the
#                         machine stays warm (default /root/jaxprune-runs)
#   JAXPRUNE_GPU_LIMIT_S  seconds the whole step may take, start to exit (default 220)
#   JAXPRUNE_GPU_PACK_S   seconds kept at the end for packing (default 10)
#   JAXPRUNE_GPU_GRACE_S  seconds between training's SIGTERM and its SIGKILL (default 30)
#   JAXPRUNE_GPU_INSTALL  0 to skip the pip install
#   JAXPRUNE_GPU_TORCH    0 to leave out gpu_speed.py's --torch
#   JAXPRUNE_GPU_SPEED    extra arguments for gpu_speed.py, after the defaults
#                         (e.g. --dtypes bfloat16 --steps 10 --repeats 3)
#   JAXPRUNE_GPU_IDLE     extra arguments for epoch_idle.py (e.g. --epochs 6)
#   JAXPRUNE_GPU_TESTS    pytest arguments for `tests` (default: TESTS below)
#   JAXPRUNE_GPU_ARGS     extra arguments for `jaxprune train` (e.g. --width 2 --epochs 1)
#   JAXPRUNE_GPU_ANY_DATA 1 to accept .bin files of any size (CPU rehearsals)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

usage="usage: bash benchmarks/gpu_session.sh {speed|tests|baseline}"
step=${1:-}
case "$step" in
  speed|tests|baseline) ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
if [ $# -ne 1 ]; then echo "$usage" >&2; exit 2; fi
for v in JAXPRUNE_GPU_LIMIT_S JAXPRUNE_GPU_PACK_S JAXPRUNE_GPU_GRACE_S; do
  if [ -n "${!v:-}" ] && ! [[ "${!v}" =~ ^[0-9]+$ ]]; then
    echo "gpu_session: $v must be whole seconds, not '${!v}'" >&2; exit 2
  fi
done

TESTS="tests/test_masks.py::test_selection_kernels_agree_with_sorting
tests/test_masks.py::test_random_kernels_agree
tests/test_masks.py::test_22_rounds_of_ten_percent_match_torch_counts
tests/test_masks.py::test_matches_torch_global_unstructured_weight_for_weight
tests/test_masks.py::test_prune_global_matches_the_spec
tests/test_train.py::test_whole_epoch_scan_equals_one_step_per_dispatch
tests/test_train.py::test_bfloat16_run_trains_resumes_and_evaluates
tests/test_models.py::test_downsampling_and_bf16
tests/test_parallel.py::test_vmapped_runs_match_separate_runs
tests/test_torch_parity.py::test_masked_sgd_epochs_equal_torch_in_float64
tests/test_train.py::test_masked_steps_keep_pruned_weights_and_momentum_exactly_zero
tests/test_train.py::test_resumed_run_equals_uninterrupted
tests/test_parallel.py::test_grouped_runs_write_their_own_dirs_and_resume_exactly
tests/test_masks_scores.py
tests/test_masks_distributions.py"

PYTEST='import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); sys.exit(pytest.main(sys.argv[1:]))'

OUT=${OUT:-results/gpu}
DATA=${JAXPRUNE_GPU_DATA:-/root/cifar10}
RUNS=${JAXPRUNE_GPU_RUNS:-/root/jaxprune-runs}
LIMIT=${JAXPRUNE_GPU_LIMIT_S:-220}
PACK_S=${JAXPRUNE_GPU_PACK_S:-10}
GRACE_S=${JAXPRUNE_GPU_GRACE_S:-30}
t0=$(date +%s)
hard=$(( t0 + LIMIT - PACK_S ))  # every command is over by then; packing follows
BIN="$DATA/cifar-10-batches-bin"
SIX="data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch"

# Data pieces arrive one per call under .data/c1..c3 (.data/c[0-9]); they accumulate in $BIN.
if compgen -G ".data/c[0-9]/*" >/dev/null; then
  if ! { mkdir -p "$BIN" && cp .data/c[0-9]/* "$BIN/"; }; then
    echo "gpu_session: could not copy .data/c*/ into $BIN" >&2; exit 1
  fi
fi

data_ready() {  # the six .bin files, each 30,730,000 bytes (any size with JAXPRUNE_GPU_ANY_DATA=1); one line if not
  local n missing=() wrong=()
  for n in $SIX; do
    if [ ! -f "$BIN/$n.bin" ]; then missing+=("$n.bin")
    elif [ "${JAXPRUNE_GPU_ANY_DATA:-0}" != 1 ] && [ "$(stat -c %s "$BIN/$n.bin")" != 30730000 ]; then wrong+=("$n.bin")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "gpu_session: missing ${missing[*]} in $BIN: the speed and tests calls carry .data/c1 and" \
      ".data/c2 to the same warm machine just before (a fresh machine starts bare)" >&2
    return 1
  fi
  if [ ${#wrong[@]} -gt 0 ]; then
    echo "gpu_session: ${wrong[*]} in $BIN is not 30,730,000 bytes (JAXPRUNE_GPU_ANY_DATA=1 accepts any size)" >&2
    return 1
  fi
}
if [ "$step" = baseline ]; then data_ready || exit 2; fi

mkdir -p "$OUT" "$RUNS" || exit 1
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-session.XXXXXX") || exit 1
STAGE="$work/$step"  # what goes into $OUT/$step.tar.gz
mkdir -p "$STAGE"
SUMMARY="$STAGE/summary.txt"
export PYTHONUNBUFFERED=1  # output reaches the logs line by line, even from a command stopped midway
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$RUNS/xla-cache}  # shared by the calls on a warm machine

say() { echo "$*" | tee -a "$SUMMARY"; }

rc=0
failed() { rc=1; say "FAILED: $*"; }

# run LOG UNTIL SIG GRACE COMMAND...: runs COMMAND, teeing it to $STAGE/LOG, sends it SIG
# at UNTIL - GRACE (epoch seconds, at most $hard) and SIGKILL at UNTIL. Sets `stopped`
# to 1 if the deadline stopped it; returns its exit status (125: skipped, no time left).
stopped=0
run() {
  local log="$STAGE/$1" until=$2 sig=$3 grace=$4 now at code
  shift 4
  (( until > hard )) && until=$hard
  at=$(( until - grace )); now=$(date +%s); stopped=0
  if (( at - now < 1 )); then
    echo "# skipped, no time left: $*" | tee -a "$log"
    return 125
  fi
  { echo "\$ $*"
    echo "# $(date -u +%FT%TZ), +$(( now - t0 )) s; SIG$sig at +$(( at - t0 )) s, SIGKILL at +$(( until - t0 )) s; device: $(head -1 "$STAGE/device.txt" 2>/dev/null)"
  } >>"$log"
  timeout --preserve-status -s "$sig" -k "$grace" "$(( at - now ))" "$@" 2>&1 | tee -a "$log"
  code=${PIPESTATUS[0]}
  if (( code != 0 && $(date +%s) >= at )); then
    stopped=1
    echo "# stopped by the deadline: SIG$sig at +$(( at - t0 )) s of the step's $LIMIT s" | tee -a "$log"
  fi
  echo "# exit $code" >>"$log"
  return "$code"
}

# A log's figures: from the first line matching $2 on, without the log's own # lines
# and without Python warnings (a "...Warning: ..." line and the source line after it).
figures() {
  awk -v from="$2" '$0 ~ from {on = 1} !on {next} /Warning: / {skip = 1; next} skip {skip = 0; next} /^#/ || /^$/ {next} {print}' "$1"
}

# outcome NAME CODE [LOG FROM]: the figures LOG printed so far (see figures), then a line
# if the command did not finish: stopped by the deadline, skipped, or failed (rc=1).
outcome() {
  local name=$1 code=$2
  [ $# -ge 4 ] && [ -f "$3" ] && figures "$3" "$4" >>"$SUMMARY"
  if (( code == 0 )); then :
  elif (( code == 125 )); then say "$name: skipped, no time left"
  elif (( stopped )); then say "$name: stopped by the deadline (what it printed before is above and in the tar)"
  else failed "$name: exit $code"
  fi
}

# The run directory's small files (config, metrics, results, reports), never checkpoints.
keep() {
  local src=$1 dst=$2 f
  [ -d "$src" ] || return 0
  mkdir -p "$dst"
  (cd "$src" && find . -path '*/checkpoints' -prune -o -type f \
    \( -name '*.csv' -o -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.txt' \) -print) |
    while IFS= read -r f; do mkdir -p "$dst/$(dirname "$f")" && cp "$src/$f" "$dst/$f"; done
}

# Checks $OUT against what the device tool brings back; exits 3, loudly, if it does not fit.
check_out() {
  local f rel size n=0 bad=()
  while IFS= read -r -d '' f; do
    rel=${f#"$OUT"/}
    [[ "$rel" =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ ]] || bad+=("$rel: a name outside letters, digits, '.', '_', '-'")
    if [ -L "$f" ]; then bad+=("$rel: a link"); continue; fi
    [ -d "$f" ] && continue
    if [ ! -f "$f" ]; then bad+=("$rel: not a plain file"); continue; fi
    n=$(( n + 1 ))
    [[ "$rel" == */*/*/* ]] && bad+=("$rel: deeper than \$OUT/a/b/file")
    size=$(stat -c %s "$f")
    (( size > 16777216 )) && bad+=("$rel: $size bytes, over 16 MiB")
  done < <(find "$OUT" -mindepth 1 -print0)
  (( n > 8 )) && bad+=("$n files, over 8")
  if [ ${#bad[@]} -gt 0 ]; then
    printf 'gpu_session: %s does not fit what comes back: %s\n' "$OUT" "${bad[@]}" >&2
    echo "gpu_session $step: FAILED, \$OUT does not fit the device tool's limits" >&2
    exit 3
  fi
  echo "gpu_session $step: \$OUT holds $n file(s), within the limits:"
  (cd "$OUT" && find . -type f -printf '  %P %s bytes\n' | sort)
}

packed=0
pack() {  # $STAGE -> $OUT/$step.tar.gz, its summary beside it; then the limits
  (( packed )) && return
  packed=1
  local big tarball="$OUT/$step.tar.gz"
  big=$(find "$STAGE" -type f -size +4M -printf '%P %s bytes\n' -delete)
  if [ -n "$big" ]; then
    echo "$big" >"$STAGE/left_out.txt"
    say "left out of the tar (over 4 MiB): $(paste -sd ';' "$STAGE/left_out.txt" | sed 's/;/; /g')"
  fi
  say "elapsed: $(( $(date +%s) - t0 )) s of the step's $LIMIT s; exit $rc"
  tar -C "$work" -czf "$tarball" "$step" || { echo "gpu_session: tar failed" >&2; exit 3; }
  cp "$SUMMARY" "$OUT/$step-summary.txt"
  echo
  echo "======== gpu_session $step: summary (also $OUT/$step-summary.txt) ========"
  cat "$SUMMARY"
  echo "========"
  check_out
  rm -rf "$work"
}
# Stopped from outside (the tool's own time limit): pack what there is.
trap 'rc=143; say "stopped from outside by a signal"; pack; exit 143' TERM INT

# --- set-up: jaxprune installed, the device line -------------------------------------
if [ "${JAXPRUNE_GPU_INSTALL:-1}" != 0 ] && ! { command -v jaxprune >/dev/null && (cd / && python3 -c "import jaxprune") 2>/dev/null; }; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . >"$STAGE/install.txt" 2>&1 ||
    { cat "$STAGE/install.txt" >&2; failed "pip install -e ."; }
fi

timeout -k 5 60 python3 - >"$STAGE/device.txt" 2>&1 <<'PY'
import importlib.metadata as md, platform, subprocess
import jax
d = jax.devices()[0]
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
except (OSError, IndexError, subprocess.SubprocessError):
    smi = "no nvidia-smi"
print(f"{d.device_kind} ({d.platform}, {jax.device_count()} device(s)); nvidia-smi: {smi}; "
      f"jax {jax.__version__}, jaxlib {md.version('jaxlib')}; python {platform.python_version()}")
PY
cp "$STAGE/device.txt" "$OUT/device.txt"
say "gpu_session $step, $(date -u +%FT%TZ), limit $LIMIT s (commands end by +$(( hard - t0 )) s)"
say "device: $(head -1 "$STAGE/device.txt")"
pieces=$(find "$BIN" -maxdepth 1 -name '*.bin' -printf '%f\n' 2>/dev/null | sort | paste -sd ' ')
say "data pieces in $BIN so far: ${pieces:-none}"

start=$(date +%s)
slice() {  # the end of the slice that ends at $1 percent of the time from set-up's end to $hard
  echo $(( start + (hard - start) * $1 / 100 ))
}

case "$step" in
  speed)
    torch=--torch
    [ "${JAXPRUNE_GPU_TORCH:-1}" = 0 ] && torch=
    # shellcheck disable=SC2086
    run gpu_speed.txt "$(slice 72)" TERM 5 python3 benchmarks/gpu_speed.py --width 64 --dtypes bfloat16 float32 \
      --runs 2 6 $torch --profile-dir "$STAGE/profile" ${JAXPRUNE_GPU_SPEED:-}
    outcome gpu_speed $? "$STAGE/gpu_speed.txt" '^ResNet18 width'
    say "== device idle between epochs (epoch_idle.py)"
    # shellcheck disable=SC2086
    run epoch_idle.txt "$hard" TERM 5 python3 benchmarks/epoch_idle.py --width 64 --dtype bfloat16 --epochs 4 \
      ${JAXPRUNE_GPU_IDLE:-}
    outcome epoch_idle $? "$STAGE/epoch_idle.txt" '^epoch '
    ;;
  tests)
    if ! python3 -c "import hypothesis" 2>/dev/null; then
      if [ -d .data/wheels ]; then
        python3 -m pip install -q --no-index --find-links .data/wheels hypothesis >>"$STAGE/install.txt" 2>&1
      fi
      python3 -c "import hypothesis" 2>/dev/null ||
        say "hypothesis is missing: the mask tests that use it will not collect (carry .data/wheels, see the header)"
    fi
    # Tests that start processes of their own (torch parity, the CLI) share the GPU with pytest's.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    # pytest as `python3 -m pytest`, except that SIGINT is made to interrupt it even where the
    # script was started with SIGINT ignored (a background job): at the deadline it stops the
    # test under way and still prints its summary and writes junit.xml.
    # shellcheck disable=SC2086
    run pytest.txt "$hard" INT 15 python3 -c "$PYTEST" -v -rfE --durations=15 -p no:cacheprovider \
      --continue-on-collection-errors --junitxml="$STAGE/junit.xml" ${JAXPRUNE_GPU_TESTS:-$TESTS}
    code=$?
    say "== pytest: $(grep -cE ' (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)' "$STAGE/pytest.txt") outcomes logged"
    grep -E '^(FAILED|ERROR) ' "$STAGE/pytest.txt" | tee -a "$SUMMARY"
    grep -E '^=+ .*( passed| failed| error| skipped| no tests ran| deselected).* =+$' "$STAGE/pytest.txt" | tail -1 | tee -a "$SUMMARY"
    if (( code == 0 )); then :
    elif (( stopped )) && ! grep -qE '^(FAILED|ERROR) ' "$STAGE/pytest.txt"; then
      say "pytest: stopped by the deadline (SIGINT); the tests not reached did not run"
    elif (( code == 125 )); then say "pytest: skipped, no time left"
    else failed "pytest: exit $code"
    fi
    ;;
  baseline)
    ls -l "$BIN" >"$STAGE/data.txt"
    # shellcheck disable=SC2086
    run train.log "$hard" TERM "$GRACE_S" jaxprune train --preset seed --data "cifar10-bin:$DATA" \
      --workdir "$RUNS/seed" --dtype bfloat16 --no-progress ${JAXPRUNE_GPU_ARGS:-}
    code=$?
    keep "$RUNS/seed" "$STAGE/seed"
    say "== baseline: jaxprune train --preset seed --dtype bfloat16 ${JAXPRUNE_GPU_ARGS:-}"
    grep -E 'compiled in|epoch [0-9]+/|SIGTERM|final test accuracy' "$STAGE/train.log" | tail -4 | tee -a "$SUMMARY"
    python3 - "$STAGE/seed/metrics.csv" <<'PY' | tee -a "$SUMMARY"
import csv, statistics, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
except OSError:
    rows = []
if not rows:
    print("no epoch saved (no metrics.csv rows)")
else:
    last = rows[-1]
    ips = [float(r["images_per_s"]) for r in rows[1:] if r.get("images_per_s")]
    med = f", median {statistics.median(ips):,.0f} images/s over epochs 2+" if ips else ""
    print(f"epochs saved: {last['epoch']}; last: train loss {float(last['train_loss']):.4f}, "
          f"test accuracy {100 * float(last['test_acc']):.2f}%{med}")
PY
    if (( code == 0 )); then say "training finished"
    elif (( code == 143 )); then
      if (( stopped )); then
        say "training stopped by the deadline (SIGTERM, exit 143), the epoch in flight finished and saved;" \
          "the same call again on the warm machine resumes"
      else say "training stopped by a SIGTERM (exit 143), the epoch in flight finished and saved"
      fi
    elif (( code == 125 )); then failed "training skipped, no time left"
    elif (( code == 137 )); then
      failed "training killed (SIGKILL) $GRACE_S s after its SIGTERM: the epoch in flight was lost," \
        "the ones before are saved (raise JAXPRUNE_GPU_GRACE_S)"
    else failed "jaxprune train: exit $code"
    fi
    ;;
esac
trap - TERM INT
pack
echo "gpu_session $step: exit $rc; outputs in $OUT"
exit "$rc"
