"""``dscore verify``: prove the production path against an independent eager reference.

A reproducible sample of input rows is scored twice:

* through the real pipeline on the cluster (``dscore.run`` on the sample, with the
  job's own settings: batch autotuning, execution mode, precision, workers);
* in this process by plain Python: every token normalized with ``str.strip`` and
  ``str.lower`` and looked up in a dict built from the mapping tables (hashing mode:
  the pure-Python XXH64 below), then the model, loaded plainly, called on those
  tensors.

The element-wise |difference| table (count, mean, std, p25, p50, p75, p99, max,
with rows missing and duplicated) is what the ads case published for its port,
as one command. The reference shares no code with the kernels.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import io
from .spec import JobSpec

log = logging.getLogger(__name__)

PAD, OOV, FIRST = 0, 1, 2
ROW_ID = "__dscore_row"  # identifies sample rows when the job has no id columns

# ---------------------------------------------------------------- the reference
_M = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (
    11400714785074694791,
    14029467366897019727,
    1609587929392839161,
    9650029242287828579,
    2870177450012600261,
)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, lane):
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def xxh64(data: bytes) -> int:
    """XXH64, seed 0, straight from the specification (slow; the reference only)."""
    n, p = len(data), 0

    def word(i, k):
        return int.from_bytes(data[i : i + k], "little")

    if n >= 32:
        v = [(_P1 + _P2) & _M, _P2, 0, (-_P1) & _M]
        while p + 32 <= n:
            v = [_round(v[i], word(p + 8 * i, 8)) for i in range(4)]
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for x in v:
            h = ((h ^ _round(0, x)) * _P1 + _P4) & _M
    else:
        h = _P5
    h = (h + n) & _M
    while p + 8 <= n:
        h = (_rotl(h ^ _round(0, word(p, 8)), 27) * _P1 + _P4) & _M
        p += 8
    if p + 4 <= n:
        h = (_rotl(h ^ ((word(p, 4) * _P1) & _M), 23) * _P2 + _P3) & _M
        p += 4
    while p < n:
        h = (_rotl(h ^ ((data[p] * _P5) & _M), 11) * _P1) & _M
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    return h ^ (h >> 32)


def _text(value, field) -> str:
    """A cell or list element as text; raw bytes are decoded as ``field.on_invalid_utf8``
    says (``replace``: invalid sequences become U+FFFD; ``fail``: UnicodeDecodeError)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace" if field.on_invalid_utf8 == "replace" else "strict")
    return str(value)


def reference_keys(value, field) -> list[str]:
    """The normalized, non-empty tokens of one cell (a Python value, or the raw bytes
    of a string), in order."""
    if value is None:
        return []
    if field.kind == "list":
        raw = [_text(x, field) for x in value if x is not None]
    elif field.kind == "delimited":
        raw = _text(value, field).split(field.sep)
    else:
        raw = [_text(value, field)]
    out = []
    for tok in raw:
        if field.strip:
            tok = tok.strip()
        if field.lower:
            tok = tok.lower()
        if tok:
            out.append(tok)
    return out


def reference_encode(values, field, mapping=None):
    """``(int32 (rows, max_len), [tokens, kept, oov, truncated])`` for Python cell values."""
    out = np.zeros((len(values), field.max_len), dtype=np.int32)
    counts = [0, 0, 0, 0]
    for i, v in enumerate(values):
        try:
            keys = reference_keys(v, field)
        except UnicodeDecodeError as e:
            from .encoding import InvalidUTF8Error  # the pipeline's error, so the same message

            raise InvalidUTF8Error(field.name, field.column, i, str(e)) from e
        kept = keys[: field.max_len] if field.truncate == "head" else keys[-field.max_len :]
        if field.buckets is not None:
            row = [FIRST + xxh64(k.encode("utf-8")) % field.buckets for k in kept]
        else:
            row = [mapping.get(k, OOV) for k in kept]
        if field.pad == "left":
            out[i, field.max_len - len(row) :] = row
        else:
            out[i, : len(row)] = row
        counts[0] += len(keys)
        counts[1] += len(row)
        counts[2] += sum(1 for r in row if r == OOV)
        counts[3] += len(keys) > field.max_len
    return out, counts


def reference_numeric(values, field):
    """``(float32 (rows, size), filled)`` for the Python cell values of a numeric field:
    each number is ``float(x)`` rounded to float32; a null cell, a null element or a NaN
    is ``field.fill`` and counts in ``filled``."""
    from .numeric import NumericSizeError

    out = np.zeros((len(values), field.size), dtype=np.float32)
    filled = 0
    for i, v in enumerate(values):
        row = [v] if v is None or not isinstance(v, list) else v
        if v is None:
            row = [None] * field.size
        elif len(row) != field.size:
            raise NumericSizeError(field.name, field.column, i, len(row), field.size)
        for j, x in enumerate(row):
            if x is None or math.isnan(float(x)):
                out[i, j] = field.fill
                filled += 1
            else:
                with np.errstate(over="ignore"):
                    out[i, j] = float(x)
    return out, filled


def _raw_type(t: pa.DataType) -> pa.DataType:
    """``t`` with its strings as binary: the cells' raw bytes, which the reference decodes itself."""
    if pa.types.is_dictionary(t):
        return _raw_type(t.value_type)
    if pa.types.is_large_string(t):
        return pa.large_binary()
    if pa.types.is_string(t) or pa.types.is_string_view(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_large_list_view(t):
        return pa.large_list(_raw_type(t.value_type))
    if pa.types.is_list(t) or pa.types.is_list_view(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(_raw_type(t.value_type))
    return t


def reference_values(column) -> list:
    """A column's cells as Python values, strings as their raw bytes (Arrow's own
    conversion would refuse invalid UTF-8 before the field's rule could apply)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    return [v for chunk in chunks for v in _raw_values(chunk)]


def _raw_values(arr: pa.Array) -> list:
    t = arr.type
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):  # some pyarrow releases cast these wrongly
        child = _raw_values(arr.values)
        spans = zip(arr.offsets.to_pylist(), arr.sizes.to_pylist(), arr.is_valid().to_pylist())
        return [child[o : o + n] if ok else None for o, n, ok in spans]
    return arr.cast(_raw_type(t)).to_pylist()


# ---------------------------------------------------------------- sampling
def sample(job: JobSpec, n: int, seed: int = 0) -> pa.Table:
    """``n`` input rows drawn uniformly without replacement (reproducible by ``seed``),
    with the columns the job reads and a ``__dscore_row`` column naming each."""
    from .plan import input_columns, plan_pieces, reading_of

    fs, files = io.expand(list(job.input), job.storage_options)
    pieces, reading = plan_pieces(job, fs, files), reading_of(job)
    if any(p.rows is None for p in pieces):  # CSV: the row count needs a read
        pieces = [dataclasses.replace(p, rows=io.read_piece(fs, p, [], reading).num_rows) for p in pieces]
    total = sum(p.rows for p in pieces)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    columns = input_columns(job.fields, job.id_columns)
    parts, start = [], 0
    for p in pieces:
        local = chosen[(chosen >= start) & (chosen < start + p.rows)] - start
        if len(local):
            t = io.read_piece(fs, p, columns, reading).take(pa.array(local))
            parts.append(t.append_column(ROW_ID, pa.array(local + start, pa.int64())))
        start += p.rows
    return pa.concat_tables(parts)


# ---------------------------------------------------------------- diff table
def diff_table(diff: np.ndarray, missing: int = 0, duplicated: int = 0) -> dict:
    """count, mean, std, p25, p50, p75, p99, max of |diff| (every element), and row checks."""
    d = np.abs(np.asarray(diff, dtype=np.float64)).ravel()
    if not d.size:
        d = np.zeros(1)
    q = np.percentile(d, [25, 50, 75, 99])
    return {
        "count": int(np.asarray(diff).size),
        "mean": float(d.mean()),
        "std": float(d.std()),
        "p25": float(q[0]),
        "p50": float(q[1]),
        "p75": float(q[2]),
        "p99": float(q[3]),
        "max": float(d.max()),
        "rows_missing": int(missing),
        "rows_duplicated": int(duplicated),
    }


def format_table(table: dict, title: str) -> str:
    keys = ("count", "mean", "std", "p25", "p50", "p75", "p99", "max")
    lines = [title, "  " + "".join(f"{k:>11}" for k in keys)]
    lines.append("  " + f"{table['count']:>11,}" + "".join(f"{table[k]:>11.2e}" for k in keys[1:]))
    lines.append(f"  rows missing: {table['rows_missing']}, rows duplicated: {table['rows_duplicated']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- verify
def reference_arrays(job: JobSpec, table: pa.Table) -> dict:
    """Plain-Python encoding of ``table``'s every field: {field name: array}."""
    from .vocab import Vocabulary

    vocab = Vocabulary.load(job.vocab, fields=job.fields, storage_options=job.storage_options) if job.vocab else None
    arrays = {}
    for f in job.fields:
        if f.numeric:
            arrays[f.name] = reference_numeric(reference_values(table.column(f.column)), f)[0]
            continue
        mapping = None
        if f.buckets is None:
            t = vocab[f.name]
            mapping = dict(zip(t.column("token").to_pylist(), t.column("index").to_pylist()))
        arrays[f.name] = reference_encode(reference_values(table.column(f.column)), f, mapping)[0]
    return arrays


def reference_scores(
    job: JobSpec, table: pa.Table, precision: str | None = None, model: str | None = None, arrays: dict | None = None
) -> np.ndarray:
    """Plain-Python encoding of ``table`` (or ``arrays``, from ``reference_arrays``) and
    the plainly loaded model on CPU: (rows, k). ``model``: which of the job's
    ``models`` (by name; default the first, or the job's single ``model``), fed its
    own fields in its order."""
    import torch

    from .jagged import Jagged
    from .model import Model

    entries = dict(job.named_models)
    if model not in entries:
        if model is not None:
            raise ValueError(f"the job has no model named {model!r}; its models are {list(entries)}")
        model = next(iter(entries))
    spec = entries[model]
    arrays = reference_arrays(job, table) if arrays is None else arrays
    fields = [f for f in job.fields if spec.fields is None or f.name in spec.fields]
    if spec.fields is not None:  # its own order
        fields.sort(key=lambda f: spec.fields.index(f.name))
    spec = dataclasses.replace(spec, precision=precision or spec.precision)
    own = {f.name: arrays[f.name] for f in fields}
    if spec.inputs == "jagged":  # the same rows without their padding
        own = {f.name: a if f.numeric else Jagged.from_padded(a) for f, a in zip(fields, own.values())}
    loaded = Model.load(spec, fields, device="cpu", storage_options=job.storage_options)
    loaded.batch_size = 1024
    with torch.inference_mode():
        return loaded.predict(own)


def verify(
    job,
    *,
    n: int = 100_000,
    seed: int = 0,
    tolerance: float = 1e-5,
    against: str | None = None,
    client=None,
    **overrides,
) -> dict:
    """Run the check; return ``{"table": ..., "passed": bool, ...}`` (see the module docstring).

    ``against="fp32"`` compares the job's precision with fp32 instead: the pipeline's
    scores against the fp32 reference, so that the table shows what bf16/fp16 cost.
    """
    from .output import Output
    from .pipeline import run

    spec = JobSpec.load(job, overrides)
    table = sample(spec, n, seed)
    base = spec.output.rstrip("/") + "-verify"
    out = Output(base, spec.storage_options)
    out.fs.makedirs(out.root, exist_ok=True)
    with out.fs.open(out.path("sample.parquet"), "wb") as f:
        pq.write_table(table, f)
    ids = [*spec.id_columns, ROW_ID]
    run_job = dataclasses.replace(  # the sample holds the columns as read: CSV typed, partition values in it
        spec, input=(out.fs.unstrip_protocol(out.path("sample.parquet")),), output=f"{base}/scores", id_columns=tuple(ids),
        csv=None, partition_types={},
    )  # fmt: skip
    report = run(run_job, client=client, overwrite=True, progress=False)
    scored = _read_scores(out)
    got_ids = scored.column(ROW_ID).to_numpy()
    want_ids = table.column(ROW_ID).to_numpy()
    uniq, counts = np.unique(got_ids, return_counts=True)
    duplicated = int((counts > 1).sum())
    missing = int(len(np.setdiff1d(want_ids, uniq)))
    position = {int(r): i for i, r in enumerate(want_ids)}
    order = np.array([position[int(r)] for r in got_ids])
    precision = "fp32" if against == "fp32" else None
    arrays = reference_arrays(spec, table)  # encoded once, for every model
    diffs, models = [], {}
    for name, model in spec.named_models:
        ran = report.model if name is None else report.models[name]
        expected = reference_scores(spec, table, precision, name, arrays)[order]
        got = np.stack([scored.column(c).to_numpy() for c in ran["outputs"]], axis=1)
        diffs.append((got - expected).ravel())
        stats = diff_table(got - expected, missing, duplicated)
        models[name] = {
            "precision": model.precision,
            "execution": ran["execution"],
            "table": stats,
            "passed": stats["max"] <= tolerance and not missing and not duplicated,
        }
    stats = diff_table(np.concatenate(diffs), missing, duplicated)
    passed = stats["max"] <= tolerance and not missing and not duplicated
    first = next(iter(models.values()))
    result = {
        "job": spec.source,
        "sample": {"rows": int(table.num_rows), "seed": seed},
        "against": "fp32 reference" if against == "fp32" else "eager reference",
        "precision": first["precision"],
        "execution": first["execution"],
        "tolerance": tolerance,
        "table": stats,  # with models: every model's columns together
        "passed": passed,
    }
    if spec.models is not None:  # a table per model
        result["models"] = models
    else:
        result["against"] += "" if against == "fp32" else f" ({spec.model.precision})"
    out.write_json("verify.json", result)
    return result


def _read_scores(out) -> pa.Table:
    fs = out.fs
    files = sorted(p for p in out.ls("scores") if p.rsplit("/", 1)[-1].startswith("part-"))
    tables = []
    for p in files:
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables)


def format_result(result: dict) -> str:
    """The diff table; with ``models``, one table per model, then the verdict on all."""
    sampled = f"{result['sample']['rows']:,} sampled rows (seed {result['sample']['seed']})"
    verdict = "PASS" if result["passed"] else "FAIL"
    tail = (
        f"\n  {verdict}: max |diff| {result['table']['max']:.2e} {'<=' if result['passed'] else '>'} "
        f"tolerance {result['tolerance']:.0e}"
    )
    if "models" in result:
        tables = [
            format_table(
                m["table"],
                f"model {name}: pipeline ({'; '.join(m['execution'])}, {m['precision']}) against the "
                f"{result['against']}" + ("" if m["passed"] else "  FAIL"),
            )
            for name, m in result["models"].items()
        ]
        return (
            f"dscore verify: {sampled}, {len(tables)} models\n"
            + "\n".join(tables)
            + tail.replace("max |diff|", "every model's max |diff|")
        )
    title = (
        f"dscore verify: {sampled}, pipeline ({'; '.join(result['execution'])}, {result['precision']}) against the "
        f"{result['against']}"
    )
    return format_table(result["table"], title) + tail


__all__ = [
    "diff_table", "format_result", "reference_arrays", "reference_encode", "reference_keys", "reference_scores",
    "reference_values", "sample", "verify", "xxh64",
]  # fmt: skip
