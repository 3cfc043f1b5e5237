#!/usr/bin/env bash
# Start a Dask scheduler and N workers on this machine as separate processes,
# print the scheduler address for `dscore score --scheduler ADDRESS`.
set -euo pipefail

# ---- Defaults. auto: dscore's worker layout rule (dscore/layout.py, printed by
# `python -m dscore.layout --cores N`), the rule of dscore's own LocalCluster and of
# every launcher here; options given explicitly win and the rest follow from them.
DEFAULT_WORKERS=auto      # worker processes; auto = one per 4 cores (dscore.layout.cores-per-worker)
DEFAULT_THREADS=auto      # Dask threads per worker process; auto = the cores left to each worker
DEFAULT_TORCH_THREADS=auto # torch/OpenMP/MKL/Numba threads per Dask thread; auto = the cores left to each thread
DEFAULT_MEMORY_LIMIT=auto # per worker process; auto = machine memory x threads / cores
DEFAULT_HOST=127.0.0.1
DEFAULT_PORT=8786
DEFAULT_DASHBOARD_PORT=8787
DEFAULT_TIMEOUT=60        # seconds to wait for the scheduler and for the workers
# ----

PROG=local.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cluster/_common.sh
. "$HERE/_common.sh"
DASK=${DASK:-dask}

usage() {
    cat <<EOF
Usage: cluster/local.sh [start] [OPTIONS]
       cluster/local.sh stop RUNDIR

Starts \`dask scheduler\` and N \`dask worker\` processes in the background, waits
until every worker has registered, and prints the scheduler address as the last
line of stdout (everything else goes to stderr):

    ADDRESS=\$(cluster/local.sh --workers 4)
    dscore score job.yaml --scheduler "\$ADDRESS"
    cluster/local.sh stop RUNDIR        # RUNDIR is printed on stderr

Options:
  --workers N          worker processes (default: $DEFAULT_WORKERS = one per 4 cores)
  --threads T          Dask threads per worker (default: $DEFAULT_THREADS = cores / workers)
  --torch-threads K    torch threads per Dask thread, exported to workers as
                       DSCORE_TORCH_THREADS and OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS
                       (default: $DEFAULT_TORCH_THREADS = the cores left to each Dask thread)
  --memory-limit M     memory per worker process, e.g. 4GiB (default: $DEFAULT_MEMORY_LIMIT)
  --host H             address to bind the scheduler and workers to
                       (default: $DEFAULT_HOST; 0.0.0.0 exposes them to the network)
  --port P             scheduler port, 0 for a free one (default: $DEFAULT_PORT)
  --dashboard-port P   scheduler dashboard port, 0 for a free one, 'none' to
                       disable (default: $DEFAULT_DASHBOARD_PORT)
  --rundir DIR         directory for pids, logs and the scheduler file
                       (default: a new \${TMPDIR:-/tmp}/dscore-cluster.XXXXXX)
  --scheduler-file F   where the scheduler writes its address
                       (default: RUNDIR/scheduler.json)
  --tls DIR            encrypt and authenticate with the certificates that
                       cluster/tls.py wrote to DIR (tls:// addresses)
  --timeout S          seconds to wait for the scheduler and the workers
                       (default: $DEFAULT_TIMEOUT)
  -h, --help           show this help

The defaults follow dscore's worker layout rule (cluster/README.md, "The worker
layout"); \`python -m dscore.layout --cores N\` prints what it gives for N cores.

Environment: DASK (default: dask) is the dask command to run; PYTHON (default:
python) the interpreter with dscore, which computes the layout.
EOF
}

if [[ ${1:-} == stop ]]; then
    [[ $# -eq 2 ]] || { usage >&2; exit 2; }
    stop_rundir "$2"
    exit 0
fi
[[ ${1:-} == start ]] && shift

workers=$DEFAULT_WORKERS threads=$DEFAULT_THREADS torch_threads=$DEFAULT_TORCH_THREADS
memory_limit=$DEFAULT_MEMORY_LIMIT host=$DEFAULT_HOST port=$DEFAULT_PORT
dashboard_port=$DEFAULT_DASHBOARD_PORT timeout=$DEFAULT_TIMEOUT
rundir='' scheduler_file='' tls_dir=''
while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --workers | --threads | --torch-threads | --memory-limit | --host | --port | \
            --dashboard-port | --rundir | --scheduler-file | --tls | --timeout)
            [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
            case $1 in
                --workers) workers=$2 ;;
                --threads) threads=$2 ;;
                --torch-threads) torch_threads=$2 ;;
                --memory-limit) memory_limit=$2 ;;
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

[[ $workers == auto ]] || require_int --workers "$workers" 1
[[ $threads == auto ]] || require_int --threads "$threads" 1
[[ $torch_threads == auto ]] || require_int --torch-threads "$torch_threads" 1
layout=$(worker_layout "$(ncores)" 0 "$workers" "$threads" "$torch_threads")
read -r workers threads torch_threads <<<"$layout"
require_int --port "$port" 0
require_int --timeout "$timeout" 1
[[ $dashboard_port == none ]] || require_int --dashboard-port "$dashboard_port" 0
command -v "$DASK" >/dev/null 2>&1 ||
    die "'$DASK' not found: activate the dscore environment (conda activate dscore) or set DASK=/path/to/dask"
cores=$(ncores)
if ((workers * threads * torch_threads > cores)); then
    info "warning: $workers workers x $threads threads x $torch_threads torch threads = $((workers * threads * torch_threads)) > $cores cores (oversubscribed)"
fi

scheduler_tls=() worker_tls=() protocol=()
if [[ -n $tls_dir ]]; then
    tls_dir=$(cd "$tls_dir" 2>/dev/null && pwd) || die "--tls: no directory $tls_dir"
    tls_files "$tls_dir" scheduler && scheduler_tls=("${TLS_ARGS[@]}")
    tls_files "$tls_dir" worker && worker_tls=("${TLS_ARGS[@]}")
    protocol=(--protocol tls)
    # Refuse unencrypted connections too, not just offer TLS.
    export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
fi

prepare_rundir "$rundir"
scheduler_file=${scheduler_file:-$RUNDIR/scheduler.json}
rm -f "$scheduler_file" # a stale file would hand out an old address
if [[ $dashboard_port == none ]]; then
    dashboard=(--no-dashboard)
else
    dashboard=(--dashboard-address "$(hostport "$host" "$dashboard_port")")
fi

spawn scheduler "$DASK" scheduler --host "$host" --port "$port" \
    --scheduler-file "$scheduler_file" "${dashboard[@]}" \
    ${protocol[@]+"${protocol[@]}"} ${scheduler_tls[@]+"${scheduler_tls[@]}"}
wait_scheduler "$scheduler_file" "$timeout"

layout_env "$torch_threads"
names=()
for ((i = 0; i < workers; i++)); do
    names+=("worker-$i")
    # Worker dashboards bind to the same host on a free port (dask's default is every
    # interface).
    spawn "worker-$i" env "${LAYOUT_ENV[@]}" "$DASK" worker "$ADDRESS" \
        --name "local-$i" --nthreads "$threads" --memory-limit "$memory_limit" \
        --host "$host" --dashboard-address "$(hostport "$host" 0)" \
        --local-directory "$RUNDIR/worker-$i" \
        ${protocol[@]+"${protocol[@]}"} ${worker_tls[@]+"${worker_tls[@]}"}
done
wait_registered "$workers" "$timeout" "${names[@]}"

echo "$ADDRESS" >"$RUNDIR/address"
info "$workers workers x $threads threads, $torch_threads torch threads, memory limit $memory_limit each"
info "run directory: $RUNDIR (logs, pids, scheduler file)"
[[ -n $tls_dir ]] && info "clients need the certificates: . $tls_dir/client.env"
info "stop with: $HERE/local.sh stop $RUNDIR"
echo "$ADDRESS"
