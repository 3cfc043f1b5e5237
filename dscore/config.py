"""dscore's tunables, in one ``dscore`` namespace of ``dask.config``.

The defaults live in ``dscore.yaml`` beside this module; dask's usual sources
override them (``DASK_DSCORE__...`` environment variables, YAML files in
``~/.config/dask``, ``dask.config.set``) and the CLI's ``--set dscore.<key>=VALUE``.
Precedence, highest first: an explicit argument or job key > ``--set`` >
dask config / environment > ``dscore.yaml``.

A job takes a ``snapshot()`` on the client when it starts and its tasks run
``using(snapshot)``, so workers started elsewhere (``dask worker`` on another
host) score with the client's settings, and a job never sees a value change
half-way.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Iterator, Mapping

import dask.config
import yaml

_DEFAULTS = os.path.join(os.path.dirname(__file__), "dscore.yaml")
with open(_DEFAULTS) as _f:
    dask.config.update_defaults(yaml.safe_load(_f))

_local = threading.local()


def get(key: str):
    """The value of ``dscore.<key>`` (``-`` and ``_`` are interchangeable), from the
    settings of the task running in this thread if any, else from dask.config."""
    settings = getattr(_local, "settings", None)
    if settings is not None:
        return dask.config.get(key, config=settings)
    return dask.config.get(f"dscore.{key}")


def snapshot() -> dict:
    """This process's ``dscore`` settings, to carry to tasks (small, picklable).

    A deep copy: ``dask.config.set`` of a nested key changes its group in place, which
    would change a running job's snapshot too.
    """
    return copy.deepcopy(dask.config.get("dscore"))


@contextlib.contextmanager
def using(settings: Mapping | None) -> Iterator[None]:
    """Make ``get`` read ``settings`` (a ``snapshot()``) in this thread while the block runs."""
    old = getattr(_local, "settings", None)
    _local.settings = settings if settings is not None else old
    try:
        yield
    finally:
        _local.settings = old
