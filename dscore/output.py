"""The output commit protocol: atomic partition files, per-partition records, _SUCCESS.

Layout of an output directory::

    part-000000.parquet ...      one file per input partition (id columns, scores)
    _parts/part-000000.json      its record, written after the file is in place
    _job.json                    what this output is: fingerprints of model, tables, fields, input
    _manifest.json, _SUCCESS     written last, only when every partition is recorded
                                 and the row counts match the input

A partition's file is written under a temporary name and renamed (on object
stores it is written as one object, which is atomic there); a retried task writes
the same final name, so it replaces rather than duplicates. A record exists only
for a complete file, so ``records()`` is always the set of finished partitions.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from . import io

SUCCESS = "_SUCCESS"
JOB = "_job.json"
MANIFEST = "_manifest.json"
QUARANTINE = "_quarantine.json"
REPORT = "_report.json"
PARTS = "_parts"


class Output:
    """An output directory on any fsspec filesystem."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url
        self.fs, self.root = io.url_to_fs(url, storage_options)
        self.root = self.root.rstrip("/")

    # -------------------------------------------------------------- names
    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    @staticmethod
    def part_name(index: int) -> str:
        return f"part-{index:06d}.parquet"

    # -------------------------------------------------------------- writes
    def _put(self, name: str, write) -> None:
        io.write_atomic(self.fs, self.path(name), write)

    def write_json(self, name: str, obj) -> None:
        data = json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
        self._put(name, lambda f: f.write(data))

    def read_json(self, name: str):
        self._fresh()
        try:
            with self.fs.open(self.path(name), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def write_part(self, index: int, tables, record) -> None:
        """The partition's file, then its record: a record implies a complete file.

        ``tables``: a table, or an iterable of tables with one schema, written as they
        come (a partition scored slice by slice); ``record``: a dict, or a function
        called for it once the file is complete.
        """

        def write(f):
            writer = None
            for table in [tables] if isinstance(tables, pa.Table) else tables:
                writer = writer or pq.ParquetWriter(f, table.schema)
                writer.write_table(table)
            if writer is None:
                raise ValueError(f"partition {index}: nothing to write")
            writer.close()

        self._put(self.part_name(index), write)
        self.write_json(f"{PARTS}/part-{index:06d}.json", record() if callable(record) else record)

    # -------------------------------------------------------------- reads
    def _fresh(self) -> None:
        # Workers (other processes) write here; object stores' filesystems cache
        # listings per instance, and fsspec shares instances within a process, so a
        # listing from before the workers wrote would hide their partitions.
        self.fs.invalidate_cache(self.path(PARTS))  # also drops the root and its parents

    def ls(self, name: str = "") -> list[str]:
        """Paths in the output directory (or its subdirectory ``name``), as they are now."""
        path = self.path(name) if name else self.root
        self._fresh()
        self.fs.invalidate_cache(path)
        return self.fs.ls(path, detail=False)

    def exists(self) -> bool:
        self._fresh()
        return self.fs.exists(self.root) and bool(self.ls())

    def records(self) -> dict[int, dict]:
        """Finished partitions by index."""
        self._fresh()
        base = self.path(PARTS)
        if not self.fs.exists(base):
            return {}
        out = {}
        paths = [p for p in self.ls(PARTS) if p.endswith(".json")]
        for p in paths:
            with self.fs.open(p, "rb") as f:
                rec = json.loads(f.read())
            out[rec["index"]] = rec
        return out

    def complete(self) -> bool:
        self._fresh()
        return self.fs.exists(self.path(SUCCESS))

    def clear(self) -> None:
        """Remove what dscore writes here (``--overwrite``); other files are left alone."""
        self._fresh()
        if not self.fs.exists(self.root):
            return
        for p in self.ls():
            base = posixpath.basename(p.rstrip("/"))
            if base.startswith("part-") or base in (SUCCESS, JOB, MANIFEST, QUARANTINE, REPORT, PARTS):
                self.fs.rm(p, recursive=True)

    def start_run(self) -> None:
        """Before a run: the output is not complete any more, and temporary files of
        writes that a crash interrupted are removed."""
        self._fresh()
        for name in (SUCCESS, MANIFEST, QUARANTINE):
            if self.fs.exists(self.path(name)):
                self.fs.rm(self.path(name))
        for name in ("", PARTS):
            if self.fs.exists(self.path(name) if name else self.root):
                for p in self.ls(name):
                    if posixpath.basename(p).startswith(".") and p.endswith(".tmp"):
                        self.fs.rm(p)
