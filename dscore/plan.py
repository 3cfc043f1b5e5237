"""Planning a job on the client, from metadata alone: its input pieces, the checks
that fail fast (schema, mapping tables, model probe), and the ``TaskSpec`` its tasks
carry.

Everything that can fail before the cluster job starts fails here, naming the file,
field or column. ``plan_inputs`` needs only file footers, so the cluster can start
while ``plan_job`` loads and probes the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from . import config, io
from .encoding import check_field_type
from .model import Model
from .model import fingerprint as model_fingerprint
from .output import Output, check_apart
from .spec import Field, JobSpec, ModelSpec, SpecError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelTask:
    """One model of a job as its tasks carry it: a spec and a fingerprint, never the
    model itself.

    ``name`` is the model's name in the job's ``models``, or None for a job's single
    ``model``. ``fields`` are the names of the fields it is fed, in the order it takes
    them (its ``fields`` key, else every field in the job's order). ``columns`` are
    its score columns (``column_names``), fixed by the client's probe; empty in a
    warm-up spec, where the model's own output names serve.
    """

    name: str | None
    spec: ModelSpec
    fingerprint: str | None  # None only in a warm-up spec (warm_task): the worker computes it
    fields: tuple
    columns: tuple = ()

    @property
    def where(self) -> str:
        """The job key of this model, for messages: ``model`` or ``models.<name>``."""
        return "model" if self.name is None else f"models.{self.name}"

    def field_specs(self, fields) -> list:
        """This model's ``Field``s, in its order, out of the job's ``fields``."""
        by_name = {f.name: f for f in fields}
        return [by_name[n] for n in self.fields]


def model_tasks(job: JobSpec) -> tuple:
    """``job``'s models as ``ModelTask``s without fingerprints or columns (``warm_task``)."""
    every = tuple(f.name for f in job.fields)
    return tuple(ModelTask(name, spec, None, tuple(spec.fields or every)) for name, spec in job.named_models)


def column_names(name: str | None, spec: ModelSpec, outputs: list) -> list:
    """A model's score columns, given the names its probe found (``Model.output_names``:
    ``spec.outputs``, else ``score`` or ``score_0..k-1``). The job's single ``model``
    keeps those; a model named ``car`` in ``models`` writes ``car`` for one unnamed
    output, ``car_0..car_{k-1}`` for k, and ``car_<output>`` for each of its ``outputs``."""
    if name is None:
        return list(outputs)
    if spec.outputs:
        return [f"{name}_{o}" for o in spec.outputs]
    return [name] if len(outputs) == 1 else [f"{name}_{i}" for i in range(len(outputs))]


def probe_models(entries, fields, id_columns, largest=None, storage_options=None) -> tuple:
    """``entries`` (``ModelTask``s) with their fingerprints and columns: each model
    loaded on the CPU and probed (with ``largest`` indices: see ``Model.probe``); a
    column that is also an id column or another model's is a ``SpecError`` naming
    the model's key."""
    out, owner = [], {c: None for c in id_columns}
    for e in entries:
        fp = model_fingerprint(e.spec.path, storage_options)
        model = Model.load(e.spec, e.field_specs(fields), device="cpu", storage_options=storage_options)
        model.probe({n: i for n, i in (largest or {}).items() if n in e.fields} if largest else None)
        columns = column_names(e.name, e.spec, model.output_names)
        for c in columns:
            if c in owner:
                other = "an id column" if owner[c] is None else f"a column of {owner[c]}"
                if owner[c] == e.where:
                    other = "another of its own columns"
                fix = f"set {e.where}.outputs" if e.name is None else f"rename the model or set {e.where}.outputs"
                raise SpecError(f"{e.where}: column {c!r} is also {other}; {fix}")
            owner[c] = e.where
        out.append(dataclasses.replace(e, fingerprint=fp, columns=tuple(columns)))
    return tuple(out)


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs to score a partition: paths and fingerprints, never the
    models or the tables themselves (workers load those once; see ``worker``).
    ``models``: the job's ``ModelTask``s, one unnamed for a job's single ``model``;
    the task reads and encodes ``fields`` once and feeds each model its own."""

    fields: tuple
    models: tuple
    vocab: str | None
    vocab_fp: str | None
    id_columns: tuple
    # Not in the repr: distributed logs a failed task's arguments, and these hold credentials.
    storage_options: dict = dataclasses.field(default_factory=dict, hash=False, compare=False, repr=False)
    rows_hint: int | None = None  # rows each worker thread should expect to score (optimize: auto)
    job_token: str = ""  # job_token(plan header): in every record and part file, checked before _SUCCESS
    encode_device: str = "auto"  # resolved in the worker (encoding.resolve_encode_device)
    partition_bytes: int | None = None  # a larger row group is scored in slices of this size (io.iter_piece)
    reading: io.Reading = dataclasses.field(default_factory=io.Reading)  # CSV options, partition types
    id_types: io.IdTypes | None = None  # every part must have these (the first file's)
    # The client's ``config.snapshot()``: tasks run under ``config.using(settings)``, so
    # that workers started elsewhere read the client's tunables (``dscore.config``).
    settings: dict = dataclasses.field(default_factory=dict, hash=False, compare=False, repr=False)

    @property
    def columns(self) -> list[str]:
        """Input columns to read: ids first, then each field's column once."""
        return input_columns(self.fields, self.id_columns)

    @property
    def model(self) -> ModelSpec:
        """The first (for a job's single ``model``: the) model's spec."""
        return self.models[0].spec

    @property
    def forms(self) -> dict:
        """``{model.inputs: fields}``: each form the models take their fields in, with the
        fields to encode so (``encoding.encode_forms``). The first model's form encodes
        every field of the job (the report counts them all); another only the fields
        its models take, so that a job of padded models encodes once."""
        every = {m.spec.inputs for m in self.models[:1]}
        forms = {}
        for m in self.models:
            names = set(m.fields) | ({f.name for f in self.fields} if m.spec.inputs in every else set())
            forms.setdefault(m.spec.inputs, set()).update(names)
        return {form: tuple(f for f in self.fields if f.name in names) for form, names in forms.items()}

    def with_models(self, **changes) -> TaskSpec:
        """A copy whose every model's spec has ``changes`` (``device="cpu"``...)."""
        models = tuple(dataclasses.replace(m, spec=dataclasses.replace(m.spec, **changes)) for m in self.models)
        return dataclasses.replace(self, models=models)

    @property
    def model_fp(self) -> str | None:
        """The first (for a job's single ``model``: the) model's fingerprint."""
        return self.models[0].fingerprint

    @property
    def outputs(self) -> list[str]:
        """Every score column, model after model."""
        return [c for m in self.models for c in m.columns]


def input_columns(fields, id_columns) -> list[str]:
    """The input columns a job reads: ids first, then each field's column once."""
    return list(dict.fromkeys([*id_columns, *(f.column for f in fields)]))


def _field_key(f: Field) -> dict:
    # size and fill came with kind: numeric; left out of categorical fields so that
    # outputs written before them still resume.
    d = f.to_dict()
    if not f.numeric:
        del d["size"], d["fill"]
    return d


def _fields_digest(fields, id_columns, outputs) -> str:
    payload = json.dumps(
        {"fields": [_field_key(f) for f in fields], "id_columns": list(id_columns), "outputs": list(outputs)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Plan:
    job: JobSpec
    task: TaskSpec
    pieces: list
    outputs: list
    header: dict
    unreadable: list  # files quarantined at planning: their footer could not be read


def check_schema(schema: pa.Schema, fields: Sequence[Field], id_columns, where: str = "") -> None:
    """Every field's column exists with a usable type, and every id column exists.

    Raises ``SpecError`` (missing column) or ``TypeError`` naming the field, the
    column, the expected and the found type, prefixed by ``where``.
    """
    prefix = f"{where}: " if where else ""
    for f in fields:
        if f.column not in schema.names:
            raise SpecError(
                f"{prefix}field {f.name!r} reads column {f.column!r}, which is not in the input; "
                f"columns are {schema.names}"
            )
        check_field_type(f, schema.field(f.column).type, where=prefix)
    for c in id_columns:
        if c not in schema.names:
            raise SpecError(f"{prefix}id column {c!r} is not in the input; columns are {schema.names}")


@dataclass
class Inputs:
    """The job's input, planned from file metadata alone."""

    pieces: list
    unreadable: list[io.Unreadable]  # files quarantined at planning
    files: list  # URLs of every input file
    id_types: io.IdTypes  # the id columns' types, which every part must have


def plan_inputs(job: JobSpec) -> Inputs:
    """Expand the input, check the first file's schema and plan the pieces: metadata
    only, so that this fails fast (naming the file, field or column) and the cluster
    can start while the rest of ``plan_job`` loads the model."""
    fs, files = io.expand(list(job.input), job.storage_options)
    check_apart(Output(job.output, job.storage_options), job.input, fs, [f.path for f in files])
    reading = reading_of(job)
    unknown = sorted(set(job.partition_types) - {k for f in files for k, _ in f.partitions})
    if unknown:
        raise SpecError(
            f"partition_types.{unknown[0]}: no input directory is named {unknown[0]}=...; "
            "remove the key or fix the input"
        )
    columns = input_columns(job.fields, job.id_columns)
    first_file, schema = _first_schema(fs, files, columns, reading, job.on_bad_input == "quarantine")
    first = io.full_url(fs, first_file.path)
    check_schema(schema, job.fields, job.id_columns, first)
    id_types = io.IdTypes.of(schema, job.id_columns, first)
    bad: list | None = [] if job.on_bad_input == "quarantine" else None
    pieces = plan_pieces(job, fs, files, bad, id_types)
    return Inputs(pieces, bad or [], [io.full_url(fs, f.path) for f in files], id_types)


def plan_job(job: JobSpec, inputs: Inputs | None = None, settings: dict | None = None) -> Plan:
    """Everything that can fail before the cluster job starts fails here, naming the
    file, field or column: inputs, schema, mapping tables, model (one-row probe).
    ``settings``: the job's ``config.snapshot()`` (default: one taken now)."""
    from .vocab import Vocabulary

    so = job.storage_options
    inputs = inputs or plan_inputs(job)
    vocab = Vocabulary.load(job.vocab, fields=job.fields, storage_options=so) if job.vocab else None
    # On the CPU, also for a CUDA job: CUDA is initialised in workers, never in the
    # client (it may have no GPU; and a forked worker cannot use its parent's context).
    models = probe_models(model_tasks(job), job.fields, job.id_columns, largest_indices(job.fields, vocab), so)
    task = dataclasses.replace(
        warm_task(job, settings=settings),
        models=models,
        vocab_fp=vocab.fingerprint() if vocab is not None else None,
        id_types=inputs.id_types,
    )
    pieces = inputs.pieces
    outputs = task.outputs
    header = {
        "format_version": FORMAT_VERSION,
        **_models_header(models),
        "vocab": {"path": job.vocab, "fingerprint": task.vocab_fp},
        "fields": _fields_digest(job.fields, job.id_columns, outputs),
        "outputs": outputs,
        "id_columns": list(job.id_columns),
        "input": {
            "partitions": len(pieces),
            "rows": sum(p.rows or 0 for p in pieces),
            "digest": hashlib.sha256(json.dumps([p.identity() for p in pieces]).encode()).hexdigest(),
            "files": inputs.files,  # every file read, or quarantined
            **({"csv": job.csv.to_dict()} if job.csv else {}),
            **({"partition_types": dict(job.partition_types)} if job.partition_types else {}),
        },
    }
    unreadable = [{"index": None, "input": u.identity, "error": u.error} for u in inputs.unreadable]
    task = dataclasses.replace(task, job_token=job_token(header))
    return Plan(job, task, pieces, outputs, header, unreadable)


def _models_header(models) -> dict:
    """The models' part of the plan header: ``model`` (path and fingerprint, as before
    ``models`` existed, so that their outputs still resume) for a job's single model,
    ``models`` (each name's path, fingerprint and fields) for several."""

    def entry(m):
        d = {"path": m.spec.path, "fingerprint": m.fingerprint}
        if m.spec.fields is not None:  # only when given: the job's fields are in the header's digest
            d["fields"] = list(m.fields)
        return d

    if len(models) == 1 and models[0].name is None:
        return {"model": entry(models[0])}
    return {"models": {m.name: entry(m) for m in models}}


def torch_threads(job: JobSpec) -> int | None:
    """The torch threads of the job's workers: ``model.threads``, or with ``models``
    the largest ``threads`` any of them sets (threads are per process, shared by
    every model in it); None for the worker's share of its host's cores."""
    threads = [spec.threads for _, spec in job.named_models if spec.threads]
    return max(threads) if threads else None


def job_token(header: dict) -> str:
    """What identifies a job's scores: a hash of its fingerprints (the plan header)."""
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:16]


def warm_task(job: JobSpec, rows_hint: int | None = None, settings: dict | None = None) -> TaskSpec:
    """``job``'s TaskSpec before the client has fingerprinted the models and tables:
    what workers warm up with (``worker.Runtime.warm``) while the client plans.
    ``settings``: the job's ``config.snapshot()`` (default: one taken now)."""
    return TaskSpec(
        fields=tuple(job.fields),
        models=model_tasks(job),
        vocab=job.vocab,
        vocab_fp=None,
        id_columns=tuple(job.id_columns),
        storage_options=job.storage_options,
        rows_hint=rows_hint,
        encode_device=job.encode_device,
        partition_bytes=partition_bytes(job),
        reading=reading_of(job),
        settings=config.snapshot() if settings is None else settings,
    )


def plan_pieces(job: JobSpec, fs, files, bad=None, id_types=None) -> list:
    """The job's input pieces, sized by its ``partition_rows`` and ``partition_bytes``."""
    return io.plan(
        fs, files, job.partition_rows, bad=bad, partition_bytes=partition_bytes(job), reading=reading_of(job),
        id_types=id_types,
    )  # fmt: skip


def partition_bytes(job: JobSpec) -> int:
    """The job's ``partition_bytes`` in bytes (``JobSpec`` fills an unset one from the
    ``partition-bytes`` setting when it is made)."""
    from dask.utils import parse_bytes

    value = job.partition_bytes
    return parse_bytes(value) if isinstance(value, str) else int(value)


def reading_of(job: JobSpec) -> io.Reading:
    """How the job's input files are read (its ``csv`` and ``partition_types`` keys)."""
    return io.Reading(job.csv, dict(job.partition_types))


def _first_schema(fs, files, columns, reading, quarantine: bool):
    """``(file, schema)`` of the first input file, the one the job is checked against.
    With ``quarantine``, an unreadable file is left for the plan to quarantine and the
    next one is used."""
    for file in files:
        try:
            return file, io.read_schema(fs, file, columns, reading)
        except io.InputError:
            if not quarantine or file is files[-1]:
                raise


def largest_indices(fields, vocab) -> dict:
    """Per field, the largest index its encoding can produce."""
    import pyarrow.compute as pc

    out = {}
    for f in fields:
        if f.numeric:
            continue
        if f.buckets is not None:
            out[f.name] = f.buckets + 1
        elif vocab is not None and vocab[f.name].num_rows:
            out[f.name] = int(pc.max(vocab[f.name].column("index")).as_py())
    return out
