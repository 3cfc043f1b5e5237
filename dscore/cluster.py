"""Connecting a job to a Dask cluster and getting its workers ready.

``connect`` gives a ``distributed.Client``: the caller's, a LocalCluster or
LocalCUDACluster laid out by the worker layout rule (``dscore.layout``), or a
running scheduler. ``register`` installs dscore's worker plugin (threads, model
cache), ``warm`` has every worker load the model and tables ahead of the first task,
and ``check_resources`` refuses a job whose tasks no worker could run.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import config, layout
from .errors import JobError
from .spec import SpecError
from .worker import DscorePlugin, runtime

if TYPE_CHECKING:
    from .plan import TaskSpec

CLUSTERS = "'local', 'local-cuda' or a scheduler address like tcp://host:8786"


@contextmanager
def connect(
    cluster: str = "local",
    client=None,
    *,
    workers=None,
    threads_per_worker=None,
    memory_limit="auto",
    resources=None,
    announce=True,
):
    """A ``distributed.Client``: the given one, a new LocalCluster, a LocalCUDACluster
    (``local-cuda``: one worker per visible GPU), or a running scheduler. Workers of a
    cluster started here offer ``resources`` (the job's), so that its tasks can run."""
    from distributed import Client, LocalCluster

    if client is not None:
        yield client
        return
    if cluster == "local-cuda":
        with local_cuda_cluster(workers, threads_per_worker, memory_limit, resources) as lc, _closing(Client(lc)) as c:
            if announce:
                announce_cluster(c)
            yield c
        return
    if cluster == "local":
        lay = layout.layout(layout.host_cores(), workers=workers, threads=threads_per_worker)
        with (
            LocalCluster(
                n_workers=lay.workers,
                threads_per_worker=lay.threads,
                processes=True,
                memory_limit=memory_limit,
                dashboard_address=":0",
                resources=resources,
            ) as lc,
            _closing(Client(lc)) as c,
        ):
            c.run(_set_log_levels, _log_levels(), on_error="ignore")
            if announce:
                announce_cluster(c)
            yield c
    elif "://" in cluster:
        try:
            client = Client(cluster)
        except (OSError, TimeoutError, TypeError) as e:  # TypeError: tls:// without certificates
            hint = (
                "; a tls:// scheduler admits only clients with its cluster's certificates: "
                "source the client.env that cluster/tls.py wrote (DASK_DISTRIBUTED__COMM__TLS__* variables)"
                if cluster.startswith("tls://")
                else ""
            )
            raise JobError(f"cannot connect to the scheduler at {cluster}: {e}{hint}") from e
        with _closing(client) as c:
            yield c
    else:
        raise SpecError(f"cluster: expected {CLUSTERS}, got {cluster!r}")


def announce_cluster(c) -> None:
    """One line on stderr: the local cluster's workers and its dashboard."""
    threads = sorted(set(c.nthreads().values())) or [0]
    print(
        f"dscore: local cluster of {len(c.nthreads())} workers x {'/'.join(map(str, threads))} threads; "
        f"dashboard {c.dashboard_link}",
        file=sys.stderr,
    )


# Workers of a local cluster write to this process's terminal: they log as it does
# (the CLI quietens distributed's task-failure records, which dscore reports itself).
_LOCAL_WORKER_LOGGERS = ("distributed.worker", "distributed.worker.state_machine")


def _log_levels() -> dict:
    return {n: logging.getLogger(n).level for n in _LOCAL_WORKER_LOGGERS}


def _set_log_levels(levels: dict) -> None:
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@contextmanager
def _closing(client):
    """Close ``client`` on exit, without ``with client``: that sets a context variable,
    which cannot be reset from another thread, and ``run`` connects in one
    (``_start_cluster``) and closes in the main thread."""
    try:
        yield client
    finally:
        client.close()


def local_cuda_cluster(workers=None, threads_per_worker=None, memory_limit="auto", resources=None):
    """A ``dask_cuda.LocalCUDACluster``: one worker process per visible GPU (or the first
    ``workers``), each pinned to its GPU by ``CUDA_VISIBLE_DEVICES``, with the
    layout rule's threads (``dscore.layout``) unless told otherwise. CUDA is initialised in
    those workers only, never here (dask-cuda counts GPUs through NVML)."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as e:
        raise SpecError(
            f"cluster: local-cuda needs dask-cuda, which cannot be imported here ({e}); "
            "pip install 'dscore[gpu]' (or conda install dask-cuda), or use cluster: local"
        ) from e
    if not threads_per_worker:
        from dask_cuda.utils import get_n_gpus

        threads_per_worker = layout.layout(layout.host_cores(), gpus=workers or get_n_gpus()).threads
    kwargs = {"threads_per_worker": threads_per_worker, "memory_limit": memory_limit, "dashboard_address": ":0"}
    if workers:
        kwargs["n_workers"] = workers
    if resources:
        kwargs["resources"] = dict(resources)
    return LocalCUDACluster(**kwargs)


def check_resources(client, resources) -> None:
    """Raise ``JobError`` unless a worker offers ``resources``: tasks that ask for what
    no worker has would wait forever. (No workers yet is ``_submit``'s to handle.)"""
    if not resources:
        return
    workers = client.scheduler_info(n_workers=-1)["workers"]
    offered = [w.get("resources") or {} for w in workers.values()]
    if not offered or any(all(have.get(k, 0) >= n for k, n in resources.items()) for have in offered):
        return
    names = sorted({k for have in offered for k in have})
    raise JobError(
        f"resources: every task asks for {dict(resources)}, but none of the {len(offered)} workers offers that "
        f"(resources offered: {names or 'none'}); start workers with e.g. `dask worker --resources GPU=1`, "
        "or drop the job's resources"
    )


def register(client, torch_threads=None) -> None:
    """Register dscore's worker plugin (threads, model cache) on every worker, unless
    it is there already with the same settings: registering again would tear down
    the workers' loaded models."""
    threads = torch_threads or _torch_threads_per_host(client)
    current = client.run(_plugin_threads, on_error="ignore")  # a worker dying meanwhile is the job's to survive
    if current and all(v == ("set", threads) for v in current.values()):
        return
    client.register_plugin(DscorePlugin(threads), name="dscore")


def warm(client, task: TaskSpec, piece) -> None:
    """Have every worker get ready for ``task`` now, in a thread of its own
    (``worker.Runtime.warm``), while the client plans; does not wait.

    Sent as tasks, like the job's own: ``task`` may hold credentials, and distributed
    logs plugin registrations and ``Client.run`` calls whole at debug level.
    """
    for address in client.scheduler_info(n_workers=-1)["workers"]:
        client.submit(_warm_now, task, piece, workers=[address], allow_other_workers=False, pure=False)


def _torch_threads_per_host(client) -> dict:
    """Torch threads for each worker host, by the layout rule: the host's cores shared
    among the Dask threads of all its workers."""
    dask_threads: dict = {}
    for address, w in client.scheduler_info(n_workers=-1)["workers"].items():
        host = _host(address)
        dask_threads[host] = dask_threads.get(host, 0) + w["nthreads"]
    cores = {_host(address): n for address, n in client.run(layout.host_cores, on_error="ignore").items()}
    return {h: layout.torch_threads(cores.get(h, 1), t) for h, t in dask_threads.items()}


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0].split("//")[-1]


def _plugin_threads(dask_worker):
    plugin = dask_worker.plugins.get("dscore")
    return ("set", plugin.torch_threads) if plugin is not None else None


def _warm_now(task, piece):
    threading.Thread(target=_warm, args=(task, piece), name="dscore-warm", daemon=True).start()


def _warm(task, piece):
    with config.using(task.settings):  # a thread of its own: it does not inherit the task's settings
        runtime().warm(task, piece)
