#!/usr/bin/env bash
# dscore's GPU check for one GPU machine without internet, in under 5 minutes:
#
#   1. installs the Python packages the machine lacks from the wheels in .whl/
#      (benchmarks/fetch_gpu_wheels.sh fetches them where PyPI is reachable),
#   2. prints nvidia-smi and the versions of everything involved,
#   3. runs pytest tests/gpu on the GPU (the real device, not numba's simulator),
#   4. runs python -m benchmarks.gpu_check: the GPU-vs-CPU diff table of scores,
#      GPU encode tokens/s, end-to-end rows/s on a LocalCUDACluster beside the
#      model-only GPU ceiling (see benchmarks/gpu_check.py).
#
# Usage, from anywhere:
#   benchmarks/gpu_check.sh [--skip-pytest] [gpu_check.py options: --rows N --threads T --cpu ...]
#
# Environment: PYTHON (default python3), WHEELS (default .whl), SITE (where missing
# wheels are installed, default /tmp/site), OUT (if set: results JSON and logs there).
# Exit status: 0 when every part passed, 1 otherwise (each part runs regardless).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/.whl}
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 DASK_LOGGING__DISTRIBUTED=${DASK_LOGGING__DISTRIBUTED:-warning}
unset NUMBA_ENABLE_CUDASIM  # the real device

skip_pytest=0
args=()
for a in "$@"; do
    case $a in
        --skip-pytest) skip_pytest=1 ;;
        -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$a") ;;
    esac
done
status=0
section() { printf '\n######## %s\n' "$*"; }

# ---- 1. packages: install a wheel only where its distribution is missing
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
section "packages from $WHEELS"
wheels=()
shopt -s nullglob
for w in "$WHEELS"/*.whl; do wheels+=("$w"); done
shopt -u nullglob
if ((${#wheels[@]})); then
    missing=()
    for w in "${wheels[@]}"; do
        dist=$(basename "$w")
        dist=${dist%%-*}
        if ! "$PYTHON" -c 'import importlib.metadata as m, sys; m.distribution(sys.argv[1])' "$dist" 2>/dev/null; then
            missing+=("$w")
        fi
    done
    if ((${#missing[@]})); then
        printf 'installing into %s:' "$SITE"; printf ' %s' "${missing[@]##*/}"; echo
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${missing[@]}" || { echo "FAILED: pip install"; status=1; }
    else
        echo "every wheel's distribution is installed already"
    fi
else
    echo "no wheels in $WHEELS (benchmarks/fetch_gpu_wheels.sh fetches them); using what is installed"
fi

# ---- 2. the machine
section "nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || status=1
else
    echo "nvidia-smi: not found"
fi
section "versions"
"$PYTHON" -m benchmarks.gpu_check --versions || status=1

# ---- 3. the GPU tests
if ((skip_pytest)); then
    section "pytest tests/gpu: skipped (--skip-pytest)"
else
    section "pytest tests/gpu (on the device)"
    log=()
    [[ -n ${OUT:-} ]] && log=(--junitxml "$OUT/pytest-gpu.xml")
    "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider --durations=5 ${log[@]+"${log[@]}"} || status=1
fi

# ---- 4. correctness and speed
section "python -m benchmarks.gpu_check ${args[*]}"
json=()
[[ -n ${OUT:-} ]] && json=(--json "$OUT/gpu_check.json")
"$PYTHON" -m benchmarks.gpu_check --no-versions ${json[@]+"${json[@]}"} ${args[@]+"${args[@]}"} || status=1

section "gpu_check.sh: $([[ $status == 0 ]] && echo 'all parts passed' || echo 'SOME PARTS FAILED (see above)')"
exit $status
