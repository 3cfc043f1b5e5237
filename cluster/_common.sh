# shellcheck shell=bash
# Shared by local.sh and gpu.sh (sourced, not run): the worker layout variables,
# starting detached processes with pid files, waiting for them, and stopping them.
#
# A run directory holds everything about one cluster:
#   scheduler.json   written by the scheduler (dask's --scheduler-file format)
#   address          the scheduler address, one line
#   NAME.pid         one per started process (scheduler, worker-0, ...)
#   NAME.log         its stdout and stderr
# so `stop RUNDIR` needs nothing but the directory.

# Seconds a stopped process gets to exit after SIGTERM before it is sent SIGKILL.
STOP_GRACE=${STOP_GRACE:-15}

die() {
    echo "${PROG:-cluster}: error: $*" >&2
    exit 1
}

info() {
    echo "${PROG:-cluster}: $*" >&2
}

require_int() { # NAME VALUE MIN
    if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3)); then
        die "$1 must be an integer >= $3, got '$2'"
    fi
}

ncores() {
    nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu
}

# host:port with brackets for IPv6 literals.
hostport() {
    if [[ $1 == *:* ]]; then echo "[$1]:$2"; else echo "$1:$2"; fi
}

# worker_layout CORES GPUS WORKERS THREADS TORCH_THREADS: prints "WORKERS THREADS
# TORCH_THREADS" by dscore's worker layout rule (dscore/layout.py), the one source of
# it; each of the last three is a number, which wins, or auto.
worker_layout() {
    local args=(--cores "$1" --gpus "$2") out
    [[ $3 == auto ]] || args+=(--workers "$3")
    [[ $4 == auto ]] || args+=(--threads "$4")
    [[ $5 == auto ]] || args+=(--torch-threads "$5")
    out=$("${PYTHON:-python}" -m dscore.layout "${args[@]}") ||
        die "could not compute the worker layout with '${PYTHON:-python} -m dscore.layout': activate the dscore environment or set PYTHON=/path/to/python"
    echo "$out"
}

# layout_env TORCH_THREADS: sets LAYOUT_ENV, the NAME=VALUE list every worker gets.
# dscore's worker plugin reads DSCORE_TORCH_THREADS for torch.set_num_threads; the
# thread pools of OpenMP, MKL, OpenBLAS and Numba get the same number, so that a
# task running torch (or a Numba parallel kernel) on each of the worker's T Dask
# threads uses at most T x K cores. Workers are started with these in their
# environment, which the nanny passes on to the worker process (it only applies its
# own OMP_NUM_THREADS=1 default when the variable is unset).
layout_env() {
    # shellcheck disable=SC2034 # read by the sourcing script
    LAYOUT_ENV=(
        "DSCORE_TORCH_THREADS=$1"
        "OMP_NUM_THREADS=$1"
        "MKL_NUM_THREADS=$1"
        "OPENBLAS_NUM_THREADS=$1"
        "NUMBA_NUM_THREADS=$1"
    )
}

# tls_files DIR ROLE: sets TLS_ARGS to the --tls-* options of ROLE (scheduler or
# worker) for certificates made by cluster/tls.py.
tls_files() {
    local dir=$1 role=$2 f
    for f in ca.pem "$role.pem" "$role-key.pem"; do
        [[ -r $dir/$f ]] || die "--tls $dir: $dir/$f is missing; create the files with: python cluster/tls.py $dir"
    done
    # shellcheck disable=SC2034 # read by the sourcing script
    TLS_ARGS=(--tls-ca-file "$dir/ca.pem" --tls-cert "$dir/$role.pem" --tls-key "$dir/$role-key.pem")
}

# prepare_rundir DIR: creates DIR (or a fresh temporary one when DIR is empty) and
# sets RUNDIR to its absolute path. Refuses a directory whose processes still run.
prepare_rundir() {
    if [[ -z $1 ]]; then
        RUNDIR=$(mktemp -d "${TMPDIR:-/tmp}/dscore-cluster.XXXXXX")
    else
        mkdir -p "$1"
        RUNDIR=$(cd "$1" && pwd)
        local pidfile
        for pidfile in "$RUNDIR"/*.pid; do
            [[ -e $pidfile ]] || continue
            if kill -0 "$(<"$pidfile")" 2>/dev/null; then
                die "$RUNDIR already has a running cluster; stop it with: $0 stop $RUNDIR"
            fi
        done
        rm -f "$RUNDIR"/*.pid "$RUNDIR/address"
    fi
}

# spawn NAME COMMAND...: runs COMMAND detached in RUNDIR, in its own process group
# where setsid exists (so that stop also reaches the worker processes a nanny
# forks), stdin closed and output to NAME.log: a caller capturing our stdout must
# not wait on a pipe that the cluster holds open.
spawn() {
    local name=$1
    shift
    if command -v setsid >/dev/null 2>&1; then
        # Not a process group leader (no job control here), so setsid execs in place
        # and $! is the pid of COMMAND itself.
        setsid "$@" </dev/null >"$RUNDIR/$name.log" 2>&1 &
    else
        "$@" </dev/null >"$RUNDIR/$name.log" 2>&1 &
    fi
    echo "$!" >"$RUNDIR/$name.pid"
}

log_tail() { # NAME
    echo "--- last lines of $RUNDIR/$1.log ---" >&2
    tail -n 20 "$RUNDIR/$1.log" >&2 || true
}

# fail_start MESSAGE [LOGNAME]: stops what this run started, then exits with MESSAGE.
fail_start() {
    [[ -n ${2:-} ]] && log_tail "$2"
    stop_rundir "$RUNDIR" >/dev/null 2>&1 || true
    die "$1"
}

# wait_scheduler SCHEDULER_FILE TIMEOUT: waits for the file, sets ADDRESS.
wait_scheduler() {
    local file=$1 deadline=$((SECONDS + $2))
    ADDRESS=
    while :; do
        if [[ -s $file ]]; then
            # The file is dask's JSON with indent=2; the first "address" is the scheduler's.
            ADDRESS=$(sed -n 's/^ *"address": *"\([^"]*\)".*/\1/p' "$file" | head -n 1)
            [[ -n $ADDRESS ]] && return 0
        fi
        kill -0 "$(<"$RUNDIR/scheduler.pid")" 2>/dev/null ||
            fail_start "the scheduler exited during startup" scheduler
        ((SECONDS < deadline)) ||
            fail_start "no scheduler file $file after $2 s; raise --timeout or see the log" scheduler
        sleep 0.2
    done
}

# wait_registered EXPECTED TIMEOUT NAME...: waits until the logs of the named
# processes report EXPECTED worker registrations with the scheduler in total.
wait_registered() {
    local expected=$1 deadline=$((SECONDS + $2)) name count n
    shift 2
    while :; do
        count=0
        for name in "$@"; do
            kill -0 "$(<"$RUNDIR/$name.pid")" 2>/dev/null ||
                fail_start "$name exited during startup" "$name"
            n=$(grep -c "Registered to:" "$RUNDIR/$name.log" 2>/dev/null) || true
            count=$((count + ${n:-0}))
        done
        ((count >= expected)) && return 0
        ((SECONDS < deadline)) ||
            fail_start "$count of $expected workers registered after $2 s; raise --timeout or see the logs in $RUNDIR" "$1"
        sleep 0.2
    done
}

# alive PID: true while the process, or any process left in its group, exists.
alive() {
    kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null
}

# ours PID: refuses to signal a recycled pid that now belongs to something else.
# A group whose leader is gone can only hold our leftovers: Linux does not hand out
# a pid that is still in use as a process group id.
ours() {
    local args
    args=$(ps -o args= -p "$1" 2>/dev/null) || return 0
    [[ $args == *dask* || $args == *distributed* ]]
}

signal() { # SIG PID
    kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true
}

# stop_rundir DIR: SIGTERM to workers, then the scheduler; SIGKILL after STOP_GRACE s.
stop_rundir() {
    local dir=$1 pidfile pid pids=() deadline
    [[ -d $dir ]] || die "no run directory $dir"
    for pidfile in "$dir"/worker*.pid "$dir"/scheduler.pid; do
        [[ -e $pidfile ]] || continue
        pid=$(<"$pidfile")
        if alive "$pid" && ours "$pid"; then
            pids+=("$pid")
            signal TERM "$pid"
        fi
    done
    deadline=$((SECONDS + STOP_GRACE))
    for pid in ${pids[@]+"${pids[@]}"}; do
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
        if alive "$pid"; then
            info "process $pid did not exit after SIGTERM; sending SIGKILL"
            signal KILL "$pid"
        fi
    done
    rm -f "$dir"/*.pid "$dir/address"
    info "stopped ${#pids[@]} process(es) of $dir"
}
