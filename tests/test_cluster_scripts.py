"""cluster/: the deployment scripts start real processes, print an address a client
can use, give workers the thread layout, and stop everything they started; the batch
launchers' job scripts and the Kubernetes manifests carry the same layout.

Tests marked ``cluster`` start real scheduler and worker processes on 127.0.0.1 and
stop them by pid; every wait has a timeout so that a hung process fails the test
instead of hanging the run.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from distributed import Client

from dscore.cluster import register
from dscore.layout import layout

from .helpers import page_faults_per_call

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAYOUT_VARS = (
    "DSCORE_TORCH_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def script_env(**extra: str) -> dict[str, str]:
    """This environment, with this interpreter's `dask` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Its processes import this checkout: dscore, and the tests' helpers that tests submit.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # The cluster must get its layout and TLS settings from the scripts, not from us.
    for var in (*LAYOUT_VARS, "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"):
        env.pop(var, None)
    env.update(extra)
    return env


def run(args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", script_env())
    return subprocess.run(
        [str(a) for a in args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def worker_layout(client: Client) -> dict[str, dict[str, str | None]]:
    # A lambda, so that cloudpickle ships it by value and it reads the worker's own
    # os.environ (os.environ.get itself would pickle this process's environment).
    return client.run(lambda: {var: os.environ.get(var) for var in LAYOUT_VARS})


def process_tree(pids) -> set[int]:
    """The pids and all their descendants that exist now."""
    found = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found |= {pid, *(child.pid for child in proc.children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
    return found


def stopped(pids, timeout: float = 30.0) -> list[int]:
    """``running(pids)`` once it is empty or ``timeout`` has passed: processes that were
    told to stop may take a moment to exit on a loaded machine."""
    deadline = time.time() + timeout
    while running(pids) and time.time() < deadline:
        time.sleep(0.2)
    return running(pids)


def running(pids) -> list[int]:
    """The pids that still run (zombies awaiting their reaper have stopped)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def kill_groups(pids) -> None:
    """Backstop after a failure: SIGKILL the process groups the scripts started."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def pidfile_pids(rundir: Path) -> list[int]:
    return [int(p.read_text()) for p in rundir.glob("*.pid")]


@pytest.fixture
def start_local(tmp_path):
    """Run cluster/local.sh on a free port; stop (and, failing that, kill) at teardown."""
    rundirs = []

    def start(*args: str) -> tuple[Path, str]:
        rundir = tmp_path / f"run{len(rundirs)}"
        rundirs.append(rundir)
        proc = run(
            [
                CLUSTER / "local.sh",
                "--rundir",
                rundir,
                "--port",
                "0",
                "--dashboard-port",
                "none",
                "--timeout",
                "40",
                *args,
            ],
        )
        assert proc.returncode == 0, proc.stderr
        return rundir, proc.stdout.strip().splitlines()[-1]

    yield start
    for rundir in rundirs:
        pids = pidfile_pids(rundir)
        try:
            run([CLUSTER / "local.sh", "stop", rundir], timeout=40)
        finally:
            kill_groups(pids)


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_local_sh_starts_workers_with_the_layout_and_stops_them(start_local):
    rundir, address = start_local(
        "--workers",
        "2",
        "--threads",
        "2",
        "--torch-threads",
        "3",
        "--memory-limit",
        "1GiB",
    )

    assert address.startswith("tcp://127.0.0.1:")
    assert json.loads((rundir / "scheduler.json").read_text())["address"] == address
    assert (rundir / "address").read_text().strip() == address
    with Client(address, timeout=10) as client:
        assert sorted(client.nthreads().values()) == [2, 2]
        assert client.submit(sum, range(10)).result(timeout=10) == 45
        assert sum(client.gather(client.map(abs, range(-20, 0)))) == 210
        layouts = worker_layout(client)
        assert len(layouts) == 2
        assert all(layout == dict.fromkeys(LAYOUT_VARS, "3") for layout in layouts.values())
        limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
        assert set(limits.values()) == {2**30}
        # dscore's plugin gives these nanny-started workers plain-process malloc thresholds.
        register(client)
        faults = client.gather(
            [client.submit(page_faults_per_call, workers=[w], pure=False) for w in client.nthreads()]
        )
        assert max(faults) < 100, faults

    # The nannies' worker processes are children, not in the pid files: collect them too.
    pids = process_tree(pidfile_pids(rundir))
    assert len(pids) >= 5  # scheduler, 2 nannies, 2 worker processes
    stop = run([CLUSTER / "local.sh", "stop", rundir], timeout=40)
    assert stop.returncode == 0, stop.stderr
    assert running(pids) == []
    assert list(rundir.glob("*.pid")) == []


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_local_sh_tls_admits_only_clients_with_the_cluster_certificates(start_local, tmp_path):
    certs, stranger = tmp_path / "certs", tmp_path / "stranger"
    for directory in (certs, stranger):
        made = run([sys.executable, CLUSTER / "tls.py", directory])
        assert made.returncode == 0, made.stderr
    assert oct((certs / "client-key.pem").stat().st_mode & 0o777) == "0o600"

    _, address = start_local("--workers", "1", "--tls", certs)
    assert address.startswith("tls://127.0.0.1:")

    # Clients in fresh processes: a refused Client can leave distributed's shared
    # event loop unusable for the next one in the same process.
    # A client set up the way users are told to (`. DIR/client.env`) computes.
    sourced = run(
        ["bash", "-c", f'. "{certs}/client.env" && exec "$0" "$@"']
        + [sys.executable, "-c", TRY_CLIENTS, address, "config"]
    )
    assert sourced.returncode == 0, sourced.stderr
    assert sourced.stdout.splitlines() == ["config: 7"]
    # So does one with explicit certificates; others are turned away.
    tried = run([sys.executable, "-c", TRY_CLIENTS, address, certs, stranger])
    assert tried.returncode == 0, tried.stderr
    assert tried.stdout.splitlines() == [
        "cluster certificate: 7",
        "no certificate: refused",
        "trusts the cluster, stranger's certificate: refused",
        "plain tcp: refused",
    ]


TRY_CLIENTS = """
import sys
from distributed import Client
from distributed.security import Security

def attempt(name, address, **kwargs):
    try:
        with Client(address, timeout=5, **kwargs) as client:
            print(f"{name}: {client.submit(sum, [3, 4]).result(timeout=10)}")
    except (OSError, TypeError, TimeoutError) as e:
        print(f"{name}: refused")
        print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)

def security(ca, me):
    return Security(
        tls_ca_file=f"{ca}/ca.pem",
        tls_client_cert=f"{me}/client.pem",
        tls_client_key=f"{me}/client-key.pem",
        require_encryption=True,
    )

address = sys.argv[1]
if sys.argv[2] == "config":  # certificates from dask config, e.g. DIR/client.env
    attempt("config", address)
else:
    certs, stranger = sys.argv[2:4]
    for name, addr, security_ in [
        ("cluster certificate", address, security(certs, certs)),
        ("no certificate", address, Security()),
        ("trusts the cluster, stranger's certificate", address, security(certs, stranger)),
        ("plain tcp", address.replace("tls://", "tcp://"), Security()),
    ]:
        attempt(name, addr, security=security_)
"""


def client_env(certs: Path) -> dict[str, str]:
    """The variables that `. DIR/client.env` exports."""
    import shlex

    env = {}
    for line in (certs / "client.env").read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = shlex.split(value)[0]
    return env


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_dscore_score_on_a_tls_cluster(start_local, tmp_path, demo):
    """`dscore score --scheduler tls://...` with the client certificate scores exactly
    once; without it, it is refused within the connect timeout; stop leaves nothing."""
    from .helpers import check_exactly_once

    certs = tmp_path / "certs"
    made = run([sys.executable, CLUSTER / "tls.py", certs])
    assert made.returncode == 0, made.stderr
    rundir, address = start_local("--workers", "2", "--threads", "1", "--tls", certs)
    assert address.startswith("tls://127.0.0.1:")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**demo["job"], "output": str(tmp_path / "out")}))
    score = [
        sys.executable,
        "-m",
        "dscore.cli",
        "score",
        job,
        "--scheduler",
        address,
        "--no-progress",
    ]
    fast = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}

    scored = run(score, timeout=180, env=script_env(**client_env(certs), **fast))
    assert scored.returncode == 0, scored.stderr
    assert "dscore complete: 6,000 rows in 6 partitions" in scored.stdout
    check_exactly_once(demo, str(tmp_path / "out"), demo["data"], 6000)

    start = time.monotonic()
    refused = run(
        [*score, "--set", f"output={tmp_path / 'out2'}"],
        timeout=60,
        env=script_env(**fast),
    )
    assert refused.returncode == 1, refused.stderr
    assert time.monotonic() - start < 45
    assert refused.stderr.startswith(f"dscore: error: cannot connect to the scheduler at {address}")
    assert "client.env" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "out2" / "_SUCCESS").exists()

    pids = process_tree(pidfile_pids(rundir))
    assert len(pids) >= 5  # scheduler, 2 nannies, 2 worker processes
    stop = run([CLUSTER / "local.sh", "stop", rundir], timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert stopped(pids) == []
    assert list(rundir.glob("*.pid")) == []


def test_tls_py_refuses_to_overwrite(tmp_path):
    assert run([sys.executable, CLUSTER / "tls.py", tmp_path]).returncode == 0
    again = run([sys.executable, CLUSTER / "tls.py", tmp_path])
    assert again.returncode != 0
    assert "pass --force" in again.stderr
    assert run([sys.executable, CLUSTER / "tls.py", tmp_path, "--force"]).returncode == 0


def test_local_sh_rejects_bad_options_and_missing_certificates(tmp_path):
    bad = run([CLUSTER / "local.sh", "--workers", "0"])
    assert bad.returncode != 0
    assert "--workers must be an integer >= 1, got '0'" in bad.stderr
    unknown = run([CLUSTER / "local.sh", "--wrokers", "2"])
    assert "unknown argument '--wrokers'" in unknown.stderr
    no_certs = run([CLUSTER / "local.sh", "--rundir", tmp_path / "run", "--tls", tmp_path])
    assert no_certs.returncode != 0
    assert "ca.pem is missing" in no_certs.stderr and "cluster/tls.py" in no_certs.stderr
    assert not (tmp_path / "run").exists()  # checked before anything starts


@pytest.mark.parametrize(
    "script",
    ["local.sh", "gpu.sh", "slurm.py", "pbs.py", "ssh.py", "tls.py"],
)
def test_every_script_has_a_usage_message(script):
    path = CLUSTER / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    args = [path, "--help"] if script.endswith(".sh") else [sys.executable, path, "--help"]
    usage = run(args)
    assert usage.returncode == 0, usage.stderr
    assert "usage" in usage.stdout.lower()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shell_scripts_pass_shellcheck():
    scripts = sorted(CLUSTER.glob("*.sh"))
    checked = run(["shellcheck", "-x", *scripts], cwd=ROOT)
    assert checked.returncode == 0, checked.stdout


def fake_commands(directory: Path, **scripts: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = directory / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    return directory


def test_gpu_sh_explains_a_missing_dask_cuda(tmp_path):
    bin_dir = fake_commands(tmp_path / "bin", dask="[[ $1 == cuda ]] && exit 2\nexit 0\n")
    proc = run([CLUSTER / "gpu.sh"], env=script_env(DASK=str(bin_dir / "dask")))
    assert proc.returncode != 0
    assert "dask-cuda is not installed" in proc.stderr
    assert "environment-gpu.yml" in proc.stderr


def test_gpu_sh_explains_missing_gpus(tmp_path):
    bin_dir = fake_commands(tmp_path / "bin", dask="exit 0\n", **{"nvidia-smi": "exit 0\n"})
    env = script_env(DASK=str(bin_dir / "dask"))
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    proc = run([CLUSTER / "gpu.sh"], env=env)
    assert proc.returncode != 0
    assert "no NVIDIA GPU" in proc.stderr and "cluster/local.sh" in proc.stderr


# ---- the worker layout rule, one source for every launcher


def test_shell_scripts_take_the_layout_from_dscore():
    """local.sh and gpu.sh compute their defaults with ``python -m dscore.layout``."""
    for cores, gpus, given, want in [
        (16, 0, ("auto", "auto", "auto"), layout(16)),
        (16, 0, ("2", "auto", "auto"), layout(16, workers=2)),
        (2, 0, ("2", "2", "3"), (2, 2, 3)),
        (16, 4, ("4", "auto", "auto"), layout(16, gpus=4)),
    ]:
        proc = run(["bash", "-c", f'. "{CLUSTER}/_common.sh"; worker_layout {cores} {gpus} {" ".join(given)}'])
        assert proc.returncode == 0, proc.stderr
        assert tuple(map(int, proc.stdout.split())) == tuple(want)
    env = script_env(PYTHON="no-such-python")
    proc = run(["bash", "-c", f'. "{CLUSTER}/_common.sh"; worker_layout 4 0 auto auto auto'], env=env)
    assert proc.returncode == 1 and "set PYTHON=/path/to/python" in proc.stderr


def test_launchers_default_to_the_layout_rule(tmp_path):
    proc = run([sys.executable, CLUSTER / "slurm.py", "--cores", "16", "--memory", "16GiB", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    (worker,) = [line for line in proc.stdout.splitlines() if "distributed.cli.dask_worker" in line]
    want = layout(16)
    assert f"--nworkers {want.workers}" in worker and f"--nthreads {want.threads}" in worker
    assert f"export DSCORE_TORCH_THREADS={want.torch_threads}" in proc.stdout

    hosts = tmp_path / "hosts"
    hosts.write_text("node0\nnode1\n")
    spec = json.loads(run([sys.executable, CLUSTER / "ssh.py", hosts, "--cores", "16", "--dry-run"]).stdout)
    workers = spec["worker_options"]
    assert (workers["n_workers"], workers["nthreads"]) == (want.workers, want.threads)
    assert workers["env"] == dict.fromkeys(LAYOUT_VARS, str(want.torch_threads))
    proc = run([sys.executable, CLUSTER / "ssh.py", hosts, "--dry-run"])
    assert proc.returncode != 0 and "pass --cores" in proc.stderr


# ---- batch systems (dask-jobqueue)

JOB_ARGS = [
    "--jobs",
    "3",
    "--cores",
    "8",
    "--memory",
    "16GiB",
    "--processes",
    "4",
    "--torch-threads",
    "2",
    "--walltime",
    "02:00:00",
    "--queue",
    "q1",
    "--account",
    "acct",
    "--prologue",
    "conda activate dscore",
    "--dry-run",
]


def check_job_script(script: str) -> None:
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    (worker,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    # 8 cores / 4 processes = 2 threads each; 16 GiB / 4 processes = 4 GiB each.
    for option in ("--nthreads 2", "--nworkers 4", "--memory-limit 4.00GiB"):
        assert option in worker
    exports = [f"export {var}=2" for var in LAYOUT_VARS]
    for export in exports:
        assert export in lines
    # The user's prologue first, so that `conda activate` cannot undo the layout.
    assert lines.index("conda activate dscore") < lines.index(exports[0])
    assert lines.index(exports[-1]) < lines.index(worker)


@pytest.mark.parametrize(
    "script, extra, prefix, directives",
    [
        ("slurm.py", "--gres=gpu:1", "#SBATCH",
         ["--cpus-per-task=8", "--mem=16G", "-t 02:00:00", "-p q1", "-A acct", "--gres=gpu:1"]),
        ("pbs.py", "-l ngpus=1", "#PBS",
         ["-l select=1:ncpus=8:mem=16GB", "-l walltime=02:00:00", "-q q1", "-A acct", "-l ngpus=1"]),
    ],
)  # fmt: skip
def test_jobqueue_dry_run_prints_the_job_script(script, extra, prefix, directives):
    proc = run([sys.executable, CLUSTER / script, *JOB_ARGS, f"--job-extra={extra}"])
    assert proc.returncode == 0, proc.stderr
    check_job_script(proc.stdout)
    for directive in directives:
        assert f"{prefix} {directive}" in proc.stdout
    assert "3 job(s)" in proc.stderr


def test_jobqueue_launchers_check_the_layout():
    proc = run(
        [
            sys.executable,
            CLUSTER / "slurm.py",
            "--cores",
            "2",
            "--memory",
            "1GiB",
            "--processes",
            "3",
            "--dry-run",
        ]
    )
    assert proc.returncode == 2
    assert "--processes 3 is more than --cores 2" in proc.stderr


def read_line(stream, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line on stdout after {timeout} s") from None


# Test doubles: sbatch runs the job script here, detached, in a process group whose id
# it reports as the job id; scancel ends that group.
FAKE_SBATCH = """\
set -euo pipefail
n=$(find "$FAKE_SLURM_DIR" -maxdepth 1 -name 'job-*.sh' | wc -l)
cp "$1" "$FAKE_SLURM_DIR/job-$n.sh"  # dask-jobqueue deletes its file once submitted
setsid bash "$FAKE_SLURM_DIR/job-$n.sh" </dev/null >"$FAKE_SLURM_DIR/job-$n.log" 2>&1 &
echo "$!" >"$FAKE_SLURM_DIR/job-$n.pid"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = 'for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null || true; done\n'


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_slurm_py_serves_workers_from_jobs_until_interrupted(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    bin_dir = fake_commands(tmp_path / "bin", sbatch=FAKE_SBATCH, scancel=FAKE_SCANCEL)
    env = script_env(FAKE_SLURM_DIR=str(jobs))
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    scheduler_file = tmp_path / "scheduler.json"
    with open(tmp_path / "launcher.log", "w") as log:
        launcher = subprocess.Popen(
            [
                sys.executable,
                str(CLUSTER / "slurm.py"),
                "--cores",
                "2",
                "--memory",
                "1GiB",
                "--processes",
                "1",
                "--torch-threads",
                "2",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--timeout",
                "40",
                "--scheduler-file",
                str(scheduler_file),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
    job_pids: list[int] = []
    try:
        address = read_line(launcher.stdout, timeout=60).strip()
        assert address.startswith("tcp://127.0.0.1:"), (tmp_path / "launcher.log").read_text()
        assert json.loads(scheduler_file.read_text())["address"] == address
        with Client(address, timeout=10) as client:
            assert list(client.nthreads().values()) == [2]
            assert client.submit(sum, [1, 2]).result(timeout=10) == 3
            assert list(worker_layout(client).values()) == [dict.fromkeys(LAYOUT_VARS, "2")]

        job_pids = pidfile_pids(jobs)
        assert len(job_pids) == 1
        pids = process_tree(job_pids)
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=40) == 0
        assert stopped(pids) == []  # the launcher cancelled its job on the way out
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        kill_groups(job_pids)


def test_ssh_py_dry_run_maps_the_hosts_file_and_layout(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# scheduler first\nnode0  # login node\n\nnode1\nnode2\n")
    proc = run(
        [
            sys.executable,
            CLUSTER / "ssh.py",
            hosts,
            "--workers-per-host",
            "4",
            "--threads",
            "2",
            "--torch-threads",
            "3",
            "--memory-limit",
            "8GiB",
            "--dry-run",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    assert spec["hosts"] == ["node0", "node1", "node2"]
    assert spec["scheduler_options"]["host"] == "node0"
    assert spec["scheduler_options"]["dashboard_address"].startswith("127.0.0.1:")
    workers = spec["worker_options"]
    assert (workers["n_workers"], workers["nthreads"], workers["memory_limit"]) == (
        4,
        2,
        "8GiB",
    )
    assert workers["env"] == dict.fromkeys(LAYOUT_VARS, "3")
    assert "8 workers" in proc.stderr

    hosts.write_text("localhost\n")
    single = json.loads(
        run(
            [
                sys.executable,
                CLUSTER / "ssh.py",
                hosts,
                "--workers-per-host",
                "1",
                "--dry-run",
            ]
        ).stdout
    )
    # The scheduler and the workers share the one host.
    assert single["hosts"] == ["localhost", "localhost"]


# ---- Kubernetes (dask-kubernetes operator)

K8S = CLUSTER / "kubernetes"


def load_all(name: str) -> list[dict]:
    with open(K8S / name) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def check_dask_cluster_spec(spec: dict, name: str) -> None:
    """The operator's DaskCluster spec: dscore image, layout env, scheduler service."""
    (worker,) = spec["worker"]["spec"]["containers"]
    (scheduler,) = spec["scheduler"]["spec"]["containers"]
    assert spec["worker"]["replicas"] >= 1
    for container in (worker, scheduler):
        assert container["image"].split("/")[-1].startswith("dscore:")
    assert worker["args"][:2] == ["dask", "worker"]
    assert "$(DASK_WORKER_NAME)" in worker["args"]
    threads = worker["args"][worker["args"].index("--nthreads") + 1]
    assert int(threads) >= 1
    env = {item["name"]: item["value"] for item in worker["env"]}
    values = {env[var] for var in LAYOUT_VARS}
    assert len(values) == 1, f"layout variables disagree: {env}"
    # dscore's worker layout rule for a pod of its cores, one worker per pod
    cores = int(worker["resources"]["limits"]["cpu"])
    assert (int(threads), int(values.pop())) == tuple(layout(cores, workers=1))[1:]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    assert {p["name"]: p["containerPort"] for p in scheduler["ports"]} == {
        "tcp-comm": 8786,
        "http-dashboard": 8787,
    }
    service = spec["scheduler"]["service"]
    assert service["selector"] == {
        "dask.org/cluster-name": name,
        "dask.org/component": "scheduler",
    }
    assert {p["port"] for p in service["ports"]} == {8786, 8787}


def test_daskjob_manifest_scores_against_its_ephemeral_cluster():
    docs = load_all("daskjob.yaml")
    (job,) = [d for d in docs if d["kind"] == "DaskJob"]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    name = job["metadata"]["name"]
    # The operator names the job's cluster (and its scheduler service) after the job.
    check_dask_cluster_spec(job["spec"]["cluster"]["spec"], name)

    pod = job["spec"]["job"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (runner,) = pod["containers"]
    assert runner["image"] == job["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]["image"]
    command = runner.get("command", []) + runner["args"]
    assert command[:3] == ["dscore", "score", "/config/job.yaml"]
    assert command[command.index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"
    (mount,) = [m for m in runner["volumeMounts"] if m["mountPath"] == "/config"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    job_file = yaml.safe_load(config_map["data"]["job.yaml"])
    assert {"input", "output", "fields", "model"} <= set(job_file)


def test_daskcluster_manifest_is_a_standing_cluster():
    (cluster,) = load_all("daskcluster.yaml")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert cluster["kind"] == "DaskCluster"
    check_dask_cluster_spec(cluster["spec"], cluster["metadata"]["name"])


def test_dockerfile_builds_from_environment_yml():
    dockerfile = (K8S / "Dockerfile").read_text()
    assert "FROM mambaorg/micromamba" in dockerfile
    assert "environment.yml" in dockerfile


# ---- conda environments


def conda_deps(name: str) -> tuple[dict[str, str], list[str]]:
    """{package: spec} of a conda environment file, and its pip lines."""
    env = yaml.safe_load((ROOT / name).read_text())
    assert env["channels"][0] == "conda-forge"
    deps, pip = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        else:
            deps[dep.split()[0].split("=")[0].split(">")[0].split("<")[0]] = dep
    return deps, pip


def test_environment_yml_covers_the_package_dependencies():
    deps, pip = conda_deps("environment.yml")
    assert pip == ["-e ."]
    required = {
        "python",
        "dask",
        "distributed",
        "pytorch",
        "pyarrow",
        "numba",
        "fsspec",
        "pyyaml",
        "click",
        "psutil",
        "s3fs",
        "pip",
    }
    assert required <= set(deps)
    assert "pytorch-cpu" in deps
    # Every runtime dependency of the package comes from conda, so that pip installs
    # only dscore itself (and never a second, CUDA-sized torch).
    pyproject = (ROOT / "pyproject.toml").read_text()
    start = pyproject.index("dependencies = [")
    names = {"torch": "pytorch"}
    for line in pyproject[start : pyproject.index("]", start)].splitlines()[1:]:
        requirement = line.strip().strip('",')
        name = requirement.split("[")[0].split(">")[0].split("=")[0].split("<")[0]
        assert names.get(name, name) in deps, f"{name} from pyproject.toml is missing in environment.yml"


def test_environment_gpu_yml_differs_only_by_the_gpu_packages():
    cpu, cpu_pip = conda_deps("environment.yml")
    gpu, gpu_pip = conda_deps("environment-gpu.yml")
    assert gpu_pip == cpu_pip
    assert set(cpu) - set(gpu) == {"pytorch-cpu"}
    assert {"pytorch-gpu", "cupy", "dask-cuda"} <= set(gpu) - set(cpu)
    assert {k: v for k, v in gpu.items() if k in cpu} == {k: v for k, v in cpu.items() if k in gpu}
