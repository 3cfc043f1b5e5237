#!/usr/bin/env bash
# Start a Dask scheduler and one dask-cuda worker per GPU on this machine, print
# the scheduler address for `dscore score --scheduler ADDRESS`.
set -euo pipefail

# ---- Defaults. auto: dscore's worker layout rule (dscore/layout.py; cluster/README.md)
DEFAULT_THREADS=auto      # Dask threads per GPU worker; auto = the cores shared among the GPUs, at least 2
DEFAULT_TORCH_THREADS=auto # CPU-side torch/OpenMP/MKL/Numba threads per Dask thread; auto = the cores left
DEFAULT_MEMORY_LIMIT=auto # host memory per worker before it spills to disk
DEFAULT_HOST=127.0.0.1
DEFAULT_PORT=8786
DEFAULT_DASHBOARD_PORT=8787
DEFAULT_TIMEOUT=120       # CUDA context creation makes GPU workers slower to start
# ----

PROG=gpu.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cluster/_common.sh
. "$HERE/_common.sh"
DASK=${DASK:-dask}

usage() {
    cat <<EOF
Usage: cluster/gpu.sh [start] [OPTIONS]
       cluster/gpu.sh stop RUNDIR

Starts \`dask scheduler\` and one \`dask cuda worker\` process, which runs one
worker per visible GPU (dask-cuda pins each to its GPU with CUDA_VISIBLE_DEVICES),
waits until they have registered, and prints the scheduler address as the last
line of stdout:

    ADDRESS=\$(cluster/gpu.sh --devices 0,1)
    dscore score job.yaml --scheduler "\$ADDRESS"
    cluster/gpu.sh stop RUNDIR          # RUNDIR is printed on stderr

Needs dask-cuda (environment-gpu.yml, or pip install 'dscore[gpu]') and NVIDIA GPUs.

Options:
  --devices LIST         GPUs to use, e.g. 0,1 (default: CUDA_VISIBLE_DEVICES, else all)
  --threads T            Dask threads per GPU worker (default: $DEFAULT_THREADS, the
                         cores divided among the GPUs, at least 2: dscore's layout rule)
  --torch-threads K      CPU threads per Dask thread, exported to workers as
                         DSCORE_TORCH_THREADS and OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS
                         (default: $DEFAULT_TORCH_THREADS)
  --memory-limit M       host memory per worker (default: $DEFAULT_MEMORY_LIMIT)
  --device-memory-limit M  device memory per worker before spilling to host
                         (default: dask-cuda's)
  --rmm-pool-size S      RMM memory pool per GPU, e.g. 20GB (default: none)
  --host H               address to bind to (default: $DEFAULT_HOST)
  --port P               scheduler port, 0 for a free one (default: $DEFAULT_PORT)
  --dashboard-port P     scheduler dashboard port, 'none' to disable
                         (default: $DEFAULT_DASHBOARD_PORT)
  --rundir DIR           directory for pids, logs and the scheduler file
                         (default: a new \${TMPDIR:-/tmp}/dscore-cluster.XXXXXX)
  --scheduler-file F     (default: RUNDIR/scheduler.json)
  --tls DIR              certificates from cluster/tls.py (tls:// addresses)
  --timeout S            seconds to wait for the scheduler and the workers
                         (default: $DEFAULT_TIMEOUT)
  -h, --help             show this help

Environment: DASK (default: dask) is the dask command to run; PYTHON (default:
python) the interpreter with dscore, which computes the layout (python -m dscore.layout).
EOF
}

if [[ ${1:-} == stop ]]; then
    [[ $# -eq 2 ]] || { usage >&2; exit 2; }
    stop_rundir "$2"
    exit 0
fi
[[ ${1:-} == start ]] && shift

devices=${CUDA_VISIBLE_DEVICES:-} threads=$DEFAULT_THREADS torch_threads=$DEFAULT_TORCH_THREADS
memory_limit=$DEFAULT_MEMORY_LIMIT device_memory_limit='' rmm_pool_size=''
host=$DEFAULT_HOST port=$DEFAULT_PORT dashboard_port=$DEFAULT_DASHBOARD_PORT
timeout=$DEFAULT_TIMEOUT rundir='' scheduler_file='' tls_dir=''
while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --devices | --threads | --torch-threads | --memory-limit | --device-memory-limit | \
            --rmm-pool-size | --host | --port | --dashboard-port | --rundir | \
            --scheduler-file | --tls | --timeout)
            [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
            case $1 in
                --devices) devices=$2 ;;
                --threads) threads=$2 ;;
                --torch-threads) torch_threads=$2 ;;
                --memory-limit) memory_limit=$2 ;;
                --device-memory-limit) device_memory_limit=$2 ;;
                --rmm-pool-size) rmm_pool_size=$2 ;;
                --host) host=$2 ;;
                --port) port=$2 ;;
                --dashboard-port) dashboard_port=$2 ;;
                --rundir) rundir=$2 ;;
                --scheduler-file) scheduler_file=$2 ;;
                --tls) tls_dir=$2 ;;
                --timeout) timeout=$2 ;;
            esac
            shift 2
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $threads == auto ]] || require_int --threads "$threads" 1
[[ $torch_threads == auto ]] || require_int --torch-threads "$torch_threads" 1
require_int --port "$port" 0
require_int --timeout "$timeout" 1
[[ $dashboard_port == none ]] || require_int --dashboard-port "$dashboard_port" 0
command -v "$DASK" >/dev/null 2>&1 ||
    die "'$DASK' not found: activate the dscore GPU environment (environment-gpu.yml) or set DASK=/path/to/dask"
# dask-cuda registers `dask cuda` with the dask command; without it the subcommand is missing.
"$DASK" cuda worker --help >/dev/null 2>&1 ||
    die "dask-cuda is not installed ('$DASK cuda worker' is missing): create the GPU environment (conda env create -f environment-gpu.yml) or pip install 'dscore[gpu]'"
command -v nvidia-smi >/dev/null 2>&1 ||
    die "no NVIDIA GPU: nvidia-smi is not on PATH (no driver?); for CPU workers use cluster/local.sh"
n_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || true
((${n_gpus:-0} > 0)) || die "no NVIDIA GPU: nvidia-smi -L lists none; for CPU workers use cluster/local.sh"
if [[ -n $devices ]]; then
    n_workers=$(tr ',' '\n' <<<"$devices" | grep -c .) || true
    ((n_workers <= n_gpus)) || die "--devices $devices names $n_workers GPUs, nvidia-smi lists $n_gpus"
    # dask cuda worker takes its GPUs from this variable and gives each worker its own
    # rotation of it, so that every worker sees a different GPU as device 0.
    device_env=("CUDA_VISIBLE_DEVICES=$devices")
else
    n_workers=$n_gpus
    device_env=()
fi
# One reads and decodes the next partition on the host while another encodes and
# scores on the GPU, each on its own CUDA stream; feeding a GPU takes many readers.
layout=$(worker_layout "$(ncores)" "$n_workers" "$n_workers" "$threads" "$torch_threads")
read -r _ threads torch_threads <<<"$layout"

scheduler_tls=() worker_tls=() protocol=()
if [[ -n $tls_dir ]]; then
    tls_dir=$(cd "$tls_dir" 2>/dev/null && pwd) || die "--tls: no directory $tls_dir"
    tls_files "$tls_dir" scheduler && scheduler_tls=("${TLS_ARGS[@]}")
    tls_files "$tls_dir" worker && worker_tls=("${TLS_ARGS[@]}")
    protocol=(--protocol tls)
    export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
fi

prepare_rundir "$rundir"
scheduler_file=${scheduler_file:-$RUNDIR/scheduler.json}
rm -f "$scheduler_file"
if [[ $dashboard_port == none ]]; then
    dashboard=(--no-dashboard)
else
    dashboard=(--dashboard-address "$(hostport "$host" "$dashboard_port")")
fi
extra=()
[[ -n $device_memory_limit ]] && extra+=(--device-memory-limit "$device_memory_limit")
[[ -n $rmm_pool_size ]] && extra+=(--rmm-pool-size "$rmm_pool_size")

spawn scheduler "$DASK" scheduler --host "$host" --port "$port" \
    --scheduler-file "$scheduler_file" "${dashboard[@]}" \
    ${protocol[@]+"${protocol[@]}"} ${scheduler_tls[@]+"${scheduler_tls[@]}"}
wait_scheduler "$scheduler_file" "$timeout"

layout_env "$torch_threads"
spawn workers env "${LAYOUT_ENV[@]}" ${device_env[@]+"${device_env[@]}"} \
    "$DASK" cuda worker "$ADDRESS" \
    --nthreads "$threads" --memory-limit "$memory_limit" --host "$host" \
    --dashboard-address "$(hostport "$host" 0)" --local-directory "$RUNDIR/workers" \
    ${extra[@]+"${extra[@]}"} \
    ${protocol[@]+"${protocol[@]}"} ${worker_tls[@]+"${worker_tls[@]}"}
wait_registered "$n_workers" "$timeout" workers

echo "$ADDRESS" >"$RUNDIR/address"
info "$n_workers GPU workers x $threads threads, $torch_threads torch threads"
info "run directory: $RUNDIR (logs, pids, scheduler file)"
[[ -n $tls_dir ]] && info "clients need the certificates: . $tls_dir/client.env"
info "stop with: $HERE/gpu.sh stop $RUNDIR"
echo "$ADDRESS"
