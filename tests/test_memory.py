"""Bounded memory: out-of-core input, and no growth over hundreds of partitions.

Slow (about a minute each) but part of CI. Figures are printed for the record.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import dscore
from dscore.demo import make_table, package_names
from dscore.errors import JobError
from dscore.worker import peak_rss

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# Per worker. An idle worker holds ~450 MiB (torch, numba, LLVM, the model); one that
# has to compile a kernel needs ~250 MiB more for a moment; the rest is partitions.
LIMIT = 1_200_000_000


def wide_table(rows, seed, first_id, apps):
    """Demo rows whose apps cell joins five rows' apps: ~4 KB a row decoded."""
    t = make_table(rows, seed=seed, first_id=first_id, apps=apps)
    col = t.column("apps").combine_chunks().fill_null("")
    wide = pc.binary_join_element_wise(*(pa.concat_arrays([col[k:], col[:k]]) for k in range(5)), ",")
    return t.set_column(t.schema.get_field_index("apps"), "apps", wide)


def run_in_one_worker(job, limit):
    """``dscore.run`` on one single-threaded worker limited to ``limit`` bytes, which the
    nanny must never have restarted; the report and the worker's peak RSS."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, memory_limit=limit, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        pid = list(c.run(os.getpid).values())[0]
        report = dscore.run(job, client=c, progress=False)
        peak = list(c.run(peak_rss).values())[0]
        assert list(c.run(os.getpid).values()) == [pid]  # never restarted by the nanny
    return report, peak


def test_out_of_core_input_in_bounded_memory(demo, tmp_path):
    """Input that decodes to >= 4x the worker's memory limit; peak RSS stays under the limit."""
    apps = package_names(5000)
    block = wide_table(25_000, 1, 0, apps)
    files, decoded = 0, 0
    while decoded < 4 * LIMIT:
        ids = pa.array(np.arange(files * 25_000, (files + 1) * 25_000, dtype=np.int64))
        pq.write_table(block.set_column(0, "user_id", ids), tmp_path / f"w{files:03d}.parquet", row_group_size=12_500)
        files += 1
        decoded += block.nbytes
    rows = files * 25_000
    job = {
        **demo["job"],
        "input": str(tmp_path / "w*.parquet"),
        "output": str(tmp_path / "out"),
        "partition_rows": 12_500,
    }
    report, peak = run_in_one_worker(job, LIMIT)
    print(f"\nout of core: {decoded / 2**30:.2f} GiB decoded input ({decoded / LIMIT:.1f}x the limit), {rows:,} rows, "
          f"worker peak RSS {peak / 2**20:.0f} MiB of a {LIMIT / 2**20:.0f} MiB limit, {report.rows_per_second:,.0f} rows/s")  # fmt: skip
    assert report.status == "complete" and report.rows == rows
    assert decoded >= 4 * LIMIT
    assert peak < LIMIT


def test_soak_rss_does_not_grow(demo, tmp_path):
    """>= 300 partitions through one worker: RSS after partition 50 grows by < 10% by the end."""
    apps = package_names(5000)
    pq.write_table(make_table(30_000, seed=3, apps=apps), tmp_path / "soak.parquet", row_group_size=100)
    job = {**demo["job"], "input": str(tmp_path / "soak.parquet"), "output": str(tmp_path / "out"),
           "partition_rows": 100, "workers": 1, "threads_per_worker": 1}  # fmt: skip
    report = dscore.run(job, progress=False)
    assert report.partitions == 300 and report.status == "complete"
    manifest = json.load(open(tmp_path / "out" / "_manifest.json"))
    rss = [p["worker_rss"] for p in sorted(manifest["partitions"], key=lambda p: p["index"])]
    after_50, end = rss[49], np.median(rss[-10:])
    growth = (end - after_50) / after_50
    print(
        f"\nsoak: 300 partitions, RSS after 50: {after_50 / 2**20:.1f} MiB, at the end {end / 2**20:.1f} MiB ({growth:+.2%})"
    )
    assert growth < 0.10


def test_row_group_larger_than_the_worker_memory_is_streamed(demo, tmp_path):
    """One 1.5M-row row group decoding to more than the worker's 1 GB limit: a piece
    cannot be smaller than a row group, so it is read, scored and written in slices;
    the worker is never restarted and every row is scored once."""
    limit, rows = 1_000_000_000, 1_500_000
    block = make_table(25_000, seed=5, apps=package_names(5000))
    table = pa.concat_tables([block] * (rows // 25_000))
    table = table.set_column(0, "user_id", pa.array(np.arange(rows, dtype=np.int64)))
    assert table.nbytes > limit
    pq.write_table(table, tmp_path / "huge.parquet", row_group_size=rows)
    del table
    job = {**demo["job"], "input": str(tmp_path / "huge.parquet"), "output": str(tmp_path / "out")}
    report, peak = run_in_one_worker(job, limit)
    print(f"\nhuge row group: {rows:,} rows in one row group, worker peak RSS {peak / 2**20:.0f} MiB of "
          f"{limit / 2**20:.0f} MiB, {report.rows_per_second:,.0f} rows/s")  # fmt: skip
    assert report.status == "complete" and report.partitions == 1 and report.rows == rows
    out = pq.read_table(tmp_path / "out" / "part-000000.parquet")
    assert out.column("user_id").to_numpy().tolist() == list(range(rows))  # in input order, once each
    assert peak < limit


def test_worker_killed_by_memory_names_the_piece_and_the_knobs(demo, tmp_path):
    """Slices larger than the worker can hold (partition_bytes far above its limit): the
    nanny kills it until the scheduler gives up, and the error names the file, its row
    groups, the limit and what to change, not a task key."""
    from distributed import Client, LocalCluster

    block = make_table(25_000, seed=6, apps=package_names(5000))
    table = pa.concat_tables([block] * 40)
    table = table.set_column(0, "user_id", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=table.num_rows)
    job = {**demo["job"], "input": str(tmp_path / "big.parquet"), "output": str(tmp_path / "out"),
           "partition_bytes": "8GiB", "retries": 0}  # fmt: skip
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="700MB", dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        with pytest.raises(
            JobError,
            match=r"big\.parquet \(row groups 0-0\): the workers scoring it died "
            r"\d+ times, most likely out of memory \(worker memory limit: 0\.65 GiB\)\. Lower partition_bytes",
        ):
            dscore.run(job, client=c, progress=False)
