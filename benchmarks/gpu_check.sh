#!/usr/bin/env bash
# One prepared check of everything that needs a GPU, in <= 8 minutes on one GPU; all output goes
# to one log. Run from anywhere; the project need not be installed (the checkout goes on
# PYTHONPATH). Steps, each under its own time limit, each reported pass/fail/skipped:
#   1. pytest -m gpu (the Triton fit kernel against scipy, the bf16 evaluator)
#   2. bench_losses.py --mode gpu   (evaluator vs the straightforward way and a bare forward pass)
#   3. bench_losses.py --mode sweep (20 checkpoints: loading overlapped with evaluation)
#   4. bench_fit.py --device cuda --n 10000000 (the fused kernel; the torch path beside it)
#   5. the losses stage with --executor local on a micro suite trained here on the GPU
#
# Needs Python >= 3.10 with torch (CUDA), triton, transformers, tokenizers, safetensors, pyarrow,
# scipy, pyyaml, tqdm, matplotlib, pytest, hypothesis. polars (needed by the command line, so by
# step 5) and ray travel as wheels when the machine lacks them: put them in <checkout>/.whl
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_17_x86_64 -d .whl polars
# and this script installs .whl/*.whl into a temporary folder first. Without polars, step 5 is
# skipped; without ray, the Ray GPU test of step 1 is deselected (Ray's wheel alone is larger
# than what a GPU check can carry).
#
#   bash benchmarks/gpu_check.sh [--log FILE] [--work DIR]   # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run                   # anywhere: checks the plan only
#
# --dry-run runs nothing heavy: it checks that every script and every option the steps use
# exist (each command's --help), that pytest collects the GPU tests, and prints the plan.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG="gpu_check.log"
WORK="${TMPDIR:-/tmp}/gpu_check"
DRY=0
PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --log) LOG="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$(dirname "$LOG")" "$WORK"
LOG="$(cd "$(dirname "$LOG")" && pwd)/$(basename "$LOG")"
exec > >(tee -a "$LOG") 2>&1
cd "$HERE"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ "$DRY" = 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" .whl/*.whl && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
has() { "$PY" -c "import $1" 2>/dev/null; }

echo "# gpu_check $(date -u +%FT%TZ) dry_run=$DRY checkout=$HERE"
"$PY" - <<'PY'
import platform, torch
print(f"# python {platform.python_version()}, torch {torch.__version__}, "
      f"cuda {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

FAILED=0
declare -a SUMMARY
# step NAME SECONDS CMD... : run CMD under a time limit (dry run: check its options instead)
step() {
  local name="$1" limit="$2"; shift 2
  echo; echo "## $name (limit ${limit} s): $*"
  if [ "$DRY" = 1 ]; then
    check_options "$@"; local rc=$?
    SUMMARY+=("$name: $([ $rc = 0 ] && echo planned || echo BROKEN)")
    [ $rc = 0 ] || FAILED=1
    return 0
  fi
  local t0=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@"; local rc=$?
  local verdict=passed
  [ $rc = 0 ] || { verdict="FAILED (exit $rc$([ $rc = 124 ] && echo ', time limit'))"; FAILED=1; }
  SUMMARY+=("$name: $verdict in $((SECONDS - t0)) s")
}
skip() { echo; echo "## $1: skipped ($2)"; SUMMARY+=("$1: skipped ($2)"); }

# every --option of a command appears in that command's --help
check_options() {
  local help
  if [ "$1" = "$PY" ] && [ "$2" = "-m" ] && [ "$3" = "pytest" ]; then
    "$PY" -m pytest --collect-only "${@:4}" | tail -n 8
    return "${PIPESTATUS[0]}"  # 5: no GPU test collected
  elif [ "$1" = "$PY" ] && [ "$2" = "-m" ]; then help="$("$PY" -m "$3" "$4" --help 2>&1)"
  else help="$("$@" --help 2>&1)"; fi || { echo "$help"; return 1; }
  local arg bad=0
  for arg in "$@"; do
    case "$arg" in
      --*) grep -q -- "${arg%%=*}" <<<"$help" || { echo "unknown option $arg"; bad=1; } ;;
    esac
  done
  [ $bad = 0 ] && echo "options ok"
  return $bad
}

DESELECT=()
has ray || DESELECT=(--deselect "tests/losses/test_losses_stage.py::test_ray_stage_on_a_gpu_agrees_with_fp32_within_the_bf16_tolerance")
step "pytest -m gpu" 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  tests/fit/test_fit.py tests/fit/test_fit_triton.py tests/losses/test_losses.py \
  tests/losses/test_losses_stage.py "${DESELECT[@]}"
step "bench_losses gpu" 90 "$PY" benchmarks/bench_losses.py --mode gpu --repeats 2
step "bench_losses sweep" 60 "$PY" benchmarks/bench_losses.py --mode sweep --checkpoints 20
step "bench_fit cuda 1e7" 100 "$PY" benchmarks/bench_fit.py --device cuda --n 10000000 \
  --scipy-n 200 --repeat 2 --peer-n 1000000 --json "$WORK/bench_fit.json"
if has polars; then
  SUITE="$WORK/micro"
  if [ "$DRY" = 1 ]; then  # the commands' own options
    step "micro suite" 0 "$PY" -m pipelines.cli suite --config X
    step "evalset" 0 "$PY" -m pipelines.cli evalset --config X
    step "losses --executor local" 0 "$PY" -m pipelines.cli losses --config X --executor local \
      --device cuda --force
  else
    step "micro suite + evalset + losses --executor local" 75 bash -c "
      set -e
      M=\$('$PY' -c 'from tests.conftest import _write_micro_manifest as w; print(w(\"$SUITE\"))')
      '$PY' -m pipelines.cli suite --config \"\$M\"
      '$PY' -m pipelines.cli evalset --config \"\$M\"
      '$PY' -m pipelines.cli losses --config \"\$M\" --executor local --device cuda --force"
  fi
else
  skip "micro suite + evalset + losses --executor local" "polars is not installed: carry its wheel in .whl"
fi

echo; echo "# summary"
printf '%s\n' "${SUMMARY[@]}"
echo "# log: $LOG"
exit $FAILED
