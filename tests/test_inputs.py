"""What an input covers and how it is read: directories matched by globs (Spark- and
hive-style), ignored names, matched files that are not data, CSV ids and options,
id column types that differ between files. Real files; real clusters where the
scores matter."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

import dscore
from dscore.io import InputError
from dscore.pipeline import score_piece
from dscore.plan import plan_job
from dscore.spec import JobSpec, SpecError

from .helpers import check_exactly_once, reference_scores

DSCORE = [sys.executable, "-m", "dscore.cli"]


def demo_part(demo, i: int) -> pa.Table:
    return pq.read_table(demo["root"] / f"part-{i}.parquet")


def write(table: pa.Table, path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, row_group_size=500)
    return str(path)


def run_cli(job: dict, tmp_path, *args):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return subprocess.run(
        [*DSCORE, "score", str(path), "--no-progress", *args], capture_output=True, text=True, timeout=600
    )


def local(urls):
    return [u.split("://", 1)[-1] for u in urls]


# ---------------------------------------------------------------- directories in globs
def spark_layout(demo, root) -> list[str]:
    """``root/in``: a plain file, a Spark output folder and a hive-partitioned folder, all
    named *.parquet, with what Spark, Hadoop and interrupted jobs leave beside them.
    Returns the data files, rows 0-5999 of the demo, once each."""
    inp = root / "in"
    t1, t2 = demo_part(demo, 1), demo_part(demo, 2)
    files = [
        write(demo_part(demo, 0), inp / "a.parquet"),
        write(t1.slice(0, 1000), inp / "b.parquet" / "part-00000-5f3c-c000.snappy.parquet"),
        write(t1.slice(1000), inp / "b.parquet" / "part-00001-5f3c-c000.snappy.parquet"),
        write(t2.slice(0, 1000), inp / "c.parquet" / "date=2026-01-01" / "part-00000.parquet"),
        write(t2.slice(1000), inp / "c.parquet" / "date=2026-01-02" / "part-00000.parquet"),
    ]
    # An interrupted task's attempt: read, it would score rows 2000-2999 twice.
    attempt = inp / "b.parquet" / "_temporary" / "0" / "task_0"
    attempt.mkdir(parents=True)
    shutil.copy(files[1], attempt)
    for name in ("_SUCCESS", "_gen_meta.json", ".a.parquet.crc", "b.parquet/_SUCCESS",
                 "b.parquet/.part-00000-5f3c-c000.snappy.parquet.crc", "c.parquet/_SUCCESS", "c.parquet/_common_metadata"):  # fmt: skip
        (inp / name).write_bytes(b"not data")
    return files


@pytest.mark.cluster
def test_glob_reads_spark_and_hive_directories_through_the_cli(demo, tmp_path):
    """Before: the glob skipped b.parquet/ and c.parquet/ silently (exit 0, _SUCCESS, 2000 of 6000 rows)."""
    files = spark_layout(demo, tmp_path)
    job = {**demo["job"], "input": str(tmp_path / "in" / "*"), "output": str(tmp_path / "out"), "workers": 2}
    r = run_cli(job, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dscore complete: 6,000 rows" in r.stdout
    check_exactly_once(demo, job["output"], files, 6000)
    manifest = json.load(open(tmp_path / "out" / "_manifest.json"))
    assert local(manifest["input"]["files"]) == files  # every file read, sorted, nothing ignored among them
    assert sorted(local(p["input"]["url"] for p in manifest["partitions"])) == sorted(files + files[:1])  # a: 2 pieces
    again = run_cli(job, tmp_path)  # the same pieces in the same order: resumes as complete
    assert again.returncode == 0 and "(6 partitions were already done)" in again.stdout, again.stdout + again.stderr


def test_a_parquet_glob_plans_every_file_of_matched_directories(demo, tmp_path):
    """Before: in/*.parquet planned a.parquet alone, 2000 of the 6000 rows."""
    files = spark_layout(demo, tmp_path)
    plan = plan_job(
        JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "in" / "*.parquet"), "output": str(tmp_path / "o")})
    )
    assert plan.header["input"]["rows"] == 6000 and local(plan.header["input"]["files"]) == files
    assert [p.partitions for p in plan.pieces][-2:] == [(("date", "2026-01-01"),), (("date", "2026-01-02"),)]


@pytest.mark.cluster
def test_hive_partition_values_are_id_columns(demo, client, tmp_path):
    t = demo_part(demo, 0)
    dirs = ["date=2026-01-01/hour=03", "date=2026-01-01/hour=__HIVE_DEFAULT_PARTITION__",
            "date=2026-01-02/hour=03", "date=2026-01-02/hour=17"]  # fmt: skip
    files = [write(t.slice(500 * i, 500), tmp_path / "in" / d / "part-0.parquet") for i, d in enumerate(dirs)]
    (tmp_path / "in" / "_SUCCESS").write_bytes(b"")
    job = {**demo["job"], "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
           "id_columns": ["user_id", "date", "hour"], "partition_types": {"hour": "int8"}}  # fmt: skip
    report = dscore.run(job, client=client, progress=False)
    assert report.status == "complete" and report.rows == 2000
    out = check_exactly_once(demo, job["output"], files, 2000)
    assert out.column_names == ["user_id", "date", "hour", "score"]
    assert out.schema.field("date").type == pa.string() and out.schema.field("hour").type == pa.int8()
    where = {(r["date"], r["hour"]) for r in out.select(["date", "hour"]).to_pylist()}
    assert where == {("2026-01-01", 3), ("2026-01-01", None), ("2026-01-02", 3), ("2026-01-02", 17)}
    for row in out.to_pylist():  # each row carries its own file's directory values
        want = dirs[row["user_id"] // 500].split("/")
        assert row["date"] == want[0][5:] and row["hour"] == (None if "DEFAULT" in want[1] else int(want[1][5:]))


def test_hive_value_of_the_wrong_type_fails_naming_the_file(demo, tmp_path):
    path = write(demo_part(demo, 0).slice(0, 500), tmp_path / "in" / "date=2026-01-01" / "part-0.parquet")
    job = JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                             "id_columns": ["user_id", "date"], "partition_types": {"date": "int32"}})  # fmt: skip
    plan = plan_job(job)
    with pytest.raises(InputError, match=rf"{path}, column 'date': hive directory date=2026-01-01 "
                                         r"is not of type int32 \(partition_types.date\); fix the directory name"):  # fmt: skip
        score_piece(plan.pieces[0], plan.task, str(tmp_path / "out"), False)
    with pytest.raises(SpecError, match=r"partition_types.hour: no input directory is named hour=\.\.\."):
        plan_job(JobSpec.from_dict({**job.to_dict(), "partition_types": {"hour": "int8"}}))


def test_a_partition_column_that_is_also_in_the_file_fails(demo, tmp_path):
    t = demo_part(demo, 0).slice(0, 500)
    path = write(t.append_column("date", pa.array(["x"] * 500)), tmp_path / "in" / "date=2026-01-01" / "p.parquet")
    plan = plan_job(JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "in"), "id_columns": ["user_id", "date"],
                                       "output": str(tmp_path / "out")}))  # fmt: skip
    with pytest.raises(InputError, match=rf"{path} .*column 'date': is a column of the file and a hive directory"):
        score_piece(plan.pieces[0], plan.task, str(tmp_path / "out"), False)


def test_hive_files_without_a_suffix_are_read(demo, tmp_path):
    """Hive names its files 000000_0: parquet by their first bytes."""
    write(demo_part(demo, 0), tmp_path / "in" / "000000_0")
    write(demo_part(demo, 1), tmp_path / "in" / "000001_0")
    plan = plan_job(JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "in"), "output": str(tmp_path / "o")}))
    assert [p.rows for p in plan.pieces] == [1000] * 4 and plan.header["input"]["rows"] == 4000


@pytest.mark.parametrize("where", ["notes.txt", "b.parquet/README.md"])
def test_a_matched_file_that_is_not_data_fails_naming_it(demo, tmp_path, where):
    write(demo_part(demo, 0), tmp_path / "in" / "a.parquet")
    write(demo_part(demo, 1), tmp_path / "in" / "b.parquet" / "part-0.parquet")
    (tmp_path / "in" / where).write_text("# not data")
    for pattern in ("*", ""):  # a glob, and the directory itself
        job = JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "in" / pattern), "output": str(tmp_path / "o")})
        with pytest.raises(InputError, match=rf"{tmp_path}/in/{where}: matched by input '.*' but neither parquet "
                                             r"\(.parquet, .parq, .pq, or starting with PAR1\) nor CSV .*rename it "
                                             r"with a leading _ or \. to have it ignored"):  # fmt: skip
            plan_job(job)


def test_an_input_of_ignored_names_only_matches_nothing(demo, tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("_SUCCESS", ".part-0.parquet.crc"):
        (tmp_path / "in" / name).write_bytes(b"")
    job = JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "in" / "*"), "output": str(tmp_path / "o")})
    with pytest.raises(
        FileNotFoundError, match=r"in/\*' matched no data files .*ignored: .part-0.parquet.crc, _SUCCESS$"
    ):
        plan_job(job)


# ---------------------------------------------------------------- one line for bad input, from the CLI
def test_bad_inputs_fail_in_one_line_naming_the_file(demo, tmp_path):
    inp = tmp_path / "in"
    write(demo_part(demo, 1), inp / "b.parquet")
    (inp / "a.parquet").write_bytes(b"")  # the first file: a writer died before its first byte
    t = demo_part(demo, 2)
    write(t.set_column(0, "user_id", t.column("user_id").cast(pa.int32())), tmp_path / "drift" / "c.parquet")
    shutil.copy(demo["root"] / "part-0.parquet", tmp_path / "drift" / "a.parquet")
    cases = {
        str(inp / "*.parquet"): rf"{inp}/a.parquet: not a readable parquet file \(footer\): .*Parquet file size is 0 bytes",
        str(tmp_path / "nothing" / "*.parquet"): rf"input '{tmp_path}/nothing/\*.parquet' matched no data files",
        str(tmp_path / "drift" / "*.parquet"): rf"{tmp_path}/drift/c.parquet, column 'user_id': id column type is int32 "
                                               rf"here but int64 in .*{tmp_path}/drift/a.parquet \(the first input file\)",
    }  # fmt: skip
    for pattern, message in cases.items():
        r = run_cli({**demo["job"], "input": pattern, "output": str(tmp_path / "out")}, tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith("dscore: error: ") and re.search(message, lines[0]), lines[0]


def test_with_quarantine_an_unreadable_first_file_is_listed_and_the_next_one_checked(demo, tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"")
    shutil.copy(demo["root"] / "part-1.parquet", tmp_path / "b.parquet")
    plan = plan_job(JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "*.parquet"), "output": str(tmp_path / "o"),
                                       "on_bad_input": "quarantine"}))  # fmt: skip
    assert [q["input"]["url"].rsplit("/", 1)[-1] for q in plan.unreadable] == ["a.parquet"]
    assert "Parquet file size is 0 bytes" in plan.unreadable[0]["error"] and plan.header["input"]["rows"] == 2000
    assert plan.task.id_types.source.endswith("b.parquet")


# ---------------------------------------------------------------- id column types
def test_id_type_drift_fails_at_planning_naming_the_file(demo, tmp_path):
    t = demo_part(demo, 1)
    shutil.copy(demo["root"] / "part-0.parquet", tmp_path / "f0.parquet")
    write(t.set_column(0, "user_id", t.column("user_id").cast(pa.int32())), tmp_path / "f1.parquet")
    job = JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "f*.parquet"), "output": str(tmp_path / "o")})
    with pytest.raises(InputError, match=r"f1.parquet, column 'user_id': id column type is int32 here but int64 in "
                                         r".*f0.parquet \(the first input file\); output parts must share one schema: "
                                         r"cast the column to int64 in this file"):  # fmt: skip
        plan_job(job)


def test_id_type_drift_between_parquet_and_csv_says_how_to_type_it(demo, tmp_path):
    shutil.copy(demo["root"] / "part-0.parquet", tmp_path / "a.parquet")
    t = demo_part(demo, 1).drop_columns(["campaigns"])
    pacsv.write_csv(t, tmp_path / "b.csv")
    job = {
        **demo["job"],
        "input": [str(tmp_path / "a.parquet"), str(tmp_path / "b.csv")],
        "output": str(tmp_path / "o"),
    }
    with pytest.raises(InputError, match=r"b.csv, column 'user_id': id column type is string here but int64 in "
                                         r".*a.parquet .*type it in the job \(csv: \{column_types: \{user_id: int64\}\}\)"):  # fmt: skip
        plan_job(JobSpec.from_dict(job))


def test_id_type_drift_after_planning_fails_before_the_part_is_written(demo, tmp_path):
    """A file rewritten between planning and its task: the task checks what it read."""
    shutil.copy(demo["root"] / "part-0.parquet", tmp_path / "f0.parquet")
    shutil.copy(demo["root"] / "part-1.parquet", tmp_path / "f1.parquet")
    plan = plan_job(
        JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "f*.parquet"), "output": str(tmp_path / "o")})
    )
    t = demo_part(demo, 1)
    write(t.set_column(0, "user_id", t.column("user_id").cast(pa.string())), tmp_path / "f1.parquet")
    piece = next(p for p in plan.pieces if p.url.endswith("f1.parquet"))
    with pytest.raises(
        InputError, match=r"f1.parquet \(row groups 0-1\), column 'user_id': id column type is string here but int64"
    ):
        score_piece(piece, plan.task, str(tmp_path / "o"), False)
    assert not os.path.exists(tmp_path / "o" / f"part-{piece.index:06d}.parquet")
    quarantined = score_piece(piece, plan.task, str(tmp_path / "o"), True)
    assert quarantined["quarantined"] and "id column type is string" in quarantined["error"]


# ---------------------------------------------------------------- CSV
CSV_FIELDS = [*(f for f in dscore.demo.FIELDS[:3]), dscore.Field("campaigns", kind="delimited", sep="|", max_len=16)]


def demo_csv_table(demo) -> pa.Table:
    """The demo's first file as CSV would hold it: zero-padded string ids, campaigns
    joined by "|" (a null list and a null element give no token either way)."""
    t = demo_part(demo, 0)
    camps = ["|".join(c for c in cell if c is not None) if cell else None for cell in t.column("campaigns").to_pylist()]
    return pa.table({
        "user_id": [f"{i:07d}" for i in t.column("user_id").to_pylist()],
        "device_name": t.column("device_name"), "device_model": t.column("device_model"),
        "apps": t.column("apps"), "campaigns": pa.array(camps, pa.string()),
    })  # fmt: skip


def check_csv_scores(demo, out: pa.Table, ids_as_ints: bool):
    want = reference_scores(demo, [str(demo["root"] / "part-0.parquet")])
    ids = out.column("user_id").to_pylist()
    keys = ids if ids_as_ints else [int(i) for i in ids]
    got = out.column("score").to_numpy()
    assert np.abs(got - np.array([want[k] for k in keys], dtype=np.float32)).max() <= 1e-6


@pytest.mark.cluster
def test_csv_ids_are_kept_byte_for_byte(demo, client, tmp_path):
    """Before: type inference read "0000123" as the int64 123."""
    table = demo_csv_table(demo)
    pacsv.write_csv(table, tmp_path / "in.csv")
    job = {**demo["job"], "input": str(tmp_path / "in.csv"), "output": str(tmp_path / "out"),
           "fields": [f.to_dict(compact=True) for f in CSV_FIELDS]}  # fmt: skip
    dscore.run(job, client=client, progress=False)
    out = pq.read_table(tmp_path / "out" / "part-000000.parquet")
    assert out.schema.field("user_id").type == pa.string()
    assert out.column("user_id").to_pylist() == table.column("user_id").to_pylist()  # "0000000", "0000001", ...
    check_csv_scores(demo, out, ids_as_ints=False)


@pytest.mark.cluster
def test_csv_options_delimiter_no_header_names_and_types(demo, client, tmp_path):
    table = demo_csv_table(demo)
    opts = pacsv.WriteOptions(include_header=False, delimiter=";")
    pacsv.write_csv(table.slice(0, 1000), tmp_path / "a.csv", opts)
    pacsv.write_csv(table.slice(1000), tmp_path / "b.csv", opts)
    csv = {"delimiter": ";", "header": False, "column_names": table.column_names, "column_types": {"user_id": "int64"}}
    job = {**demo["job"], "input": str(tmp_path / "*.csv"), "output": str(tmp_path / "out"), "csv": csv,
           "fields": [f.to_dict(compact=True) for f in CSV_FIELDS]}  # fmt: skip
    report = dscore.run(job, client=client, progress=False)
    assert report.rows == 2000 and report.partitions == 2
    out = pa.concat_tables(pq.read_table(tmp_path / "out" / f"part-{i:06d}.parquet") for i in range(2))
    assert out.schema.field("user_id").type == pa.int64()  # typed as the job says
    assert out.column("user_id").to_pylist() == list(range(2000))
    check_csv_scores(demo, out, ids_as_ints=True)
    header = json.load(open(tmp_path / "out" / "_job.json"))["input"]
    assert header["csv"]["delimiter"] == ";" and len(header["files"]) == 2


@pytest.mark.cluster
def test_verify_reads_csv_and_hive_input_as_score_does(demo, client, tmp_path):
    from dscore.verify import verify

    table = demo_csv_table(demo)
    opts = pacsv.WriteOptions(delimiter=";")
    for i, day in enumerate(("2026-01-01", "2026-01-02")):
        os.makedirs(tmp_path / "in" / f"date={day}")
        pacsv.write_csv(table.slice(1000 * i, 1000), tmp_path / "in" / f"date={day}" / "part-0.csv", opts)
    job = {**demo["job"], "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "csv": {"delimiter": ";"},
           "id_columns": ["user_id", "date"], "partition_types": {"date": "date32"},
           "fields": [f.to_dict(compact=True) for f in CSV_FIELDS]}  # fmt: skip
    result = verify(job, n=500, seed=3, client=client)
    assert result["passed"] and result["table"]["count"] == 500 and result["table"]["max"] <= 1e-6
