"""Typed, validated option objects: ``Field``, ``ModelSpec``, ``CsvSpec``, ``JobSpec``.

Each validates when it is constructed, so the Python API gets the same checks and
messages as a YAML job file; every error is a ``SpecError`` that names the key at
fault (``model.batch_size``, ``fields[2]``), says what was found and what is allowed.
The job file's keys and their precedence are in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import KW_ONLY, dataclass

from . import config
from .errors import SpecError

KINDS = ("delimited", "list", "scalar", "numeric")
# Keys of the categorical kinds; a numeric field must leave them at their defaults.
CATEGORICAL_KEYS = ("sep", "max_len", "truncate", "pad", "lower", "strip", "buckets")
ENCODE_DEVICES = ("auto", "cpu", "cuda")
MODEL_INPUTS = ("padded", "jagged")
TRUNCATE = ("head", "tail")
PAD = ("right", "left")
ON_INVALID_UTF8 = ("fail", "replace")
# Indices are int32 and 0/1 are reserved, so buckets must leave 2 + (buckets - 1) < 2**31.
MAX_BUCKETS = 2**31 - 2


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Field:
    """One categorical input of the model.

    Parameters
    ----------
    name : str
        The field's name: the model's input of that name and the vocabulary table
        ``<vocab>/<name>.parquet``.
    column : str, optional
        Input column; defaults to ``name``.
    kind : {"delimited", "list", "scalar", "numeric"}
        ``delimited``: a string cell of tokens separated by ``sep``; ``list``: an
        Arrow ``list<string>`` cell, one token per element; ``scalar``: the whole cell
        is one token. Integer columns (and lists of integers) work too: the token is
        the integer's decimal text. ``numeric``: a dense input, not a token: an
        integer or floating column, or a ``fixed_size_list`` of them (or a list whose
        every row has ``size`` elements), fed to the model as float32 ``(rows, size)``.
        It takes no vocabulary and none of the token keys (``sep``, ``max_len``, ...).
    sep : str
        Separator of ``delimited`` fields.
    max_len : int
        Tokens kept per row; the output has shape ``(rows, max_len)``.
    truncate : {"head", "tail"}
        Keep the first or the last ``max_len`` tokens.
    pad : {"right", "left"}
        Side on which rows shorter than ``max_len`` are padded with 0.
    lower, strip : bool
        Normalization: a token's key is exactly Python's ``token.strip().lower()``
        (each step only when enabled). Tokens empty after normalization are dropped;
        a null cell, list or list element contributes no token.
    on_invalid_utf8 : {"fail", "replace"}
        A string cell that is not valid UTF-8: ``fail`` (the default) fails the
        partition with an error naming the column and the first such row;
        ``replace`` reads it as Python's ``bytes.decode("utf-8", "replace")`` does
        (U+FFFD for each maximal invalid subpart: overlong forms, surrogates,
        truncated sequences, bytes above U+10FFFF, lone continuation bytes), then
        normalizes the result as usual. Hashing mode hashes the replaced key.
    buckets : int, optional
        Hashing mode: index ``2 + hash_token(key) % buckets`` instead of a
        vocabulary table.
    size : int
        ``numeric`` only: values per row, the width of its float32 ``(rows, size)``
        input (default 1: one number per cell).
    fill : float
        ``numeric`` only: the value of a null cell, a null list element or a NaN
        (default 0.0); the report counts the values filled.

    Encoding convention: 0 is padding, 1 is out of vocabulary, vocabulary tokens
    have indices from 2.
    """

    name: str
    _: KW_ONLY
    column: str | None = None
    kind: str = "delimited"
    sep: str = ","
    max_len: int = 1
    truncate: str = "head"
    pad: str = "right"
    lower: bool = True
    strip: bool = True
    on_invalid_utf8: str = "fail"
    buckets: int | None = None
    size: int = 1
    fill: float = 0.0

    def __post_init__(self):
        def bad(key, found, expected):
            raise SpecError(f"field {self.name!r}: {key} is {found!r}; expected {expected}")

        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"field name must be a non-empty string, got {self.name!r}")
        if "/" in self.name or "\\" in self.name:
            bad("name", self.name, "a name without path separators (it names the file <vocab>/<name>.parquet)")
        if self.column is None:
            object.__setattr__(self, "column", self.name)
        elif not isinstance(self.column, str) or not self.column:
            bad("column", self.column, "a column name (string)")
        if self.kind not in KINDS:
            bad("kind", self.kind, f"one of {', '.join(KINDS)}")
        if not isinstance(self.sep, str) or not self.sep:
            bad("sep", self.sep, "a non-empty string")
        if not _is_int(self.max_len):
            bad("max_len", self.max_len, "a positive integer")
        if self.max_len < 1:
            bad("max_len", self.max_len, "a positive integer")
        if self.truncate not in TRUNCATE:
            bad("truncate", self.truncate, f"one of {', '.join(TRUNCATE)}")
        if self.pad not in PAD:
            bad("pad", self.pad, f"one of {', '.join(PAD)}")
        for key in ("lower", "strip"):
            if not isinstance(getattr(self, key), bool):
                bad(key, getattr(self, key), "true or false")
        if self.on_invalid_utf8 not in ON_INVALID_UTF8:
            bad("on_invalid_utf8", self.on_invalid_utf8, f"one of {', '.join(ON_INVALID_UTF8)}")
        if self.buckets is not None:
            if not _is_int(self.buckets):
                bad("buckets", self.buckets, "a positive integer or null")
            if not 1 <= self.buckets <= MAX_BUCKETS:
                bad("buckets", self.buckets, f"an integer from 1 to {MAX_BUCKETS}")
        if not _is_int(self.size) or self.size < 1:
            bad("size", self.size, "a positive integer")
        if not isinstance(self.fill, (int, float)) or isinstance(self.fill, bool):
            bad("fill", self.fill, "a number")
        object.__setattr__(self, "fill", float(self.fill))
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if self.kind == "numeric":
            for key in CATEGORICAL_KEYS:
                if getattr(self, key) != defaults[key]:
                    raise SpecError(
                        f"field {self.name!r}: {key} is {getattr(self, key)!r} but kind is 'numeric', which "
                        f"takes no {key}; remove {key} (a numeric field's width is size)"
                    )
        else:
            for key in ("size", "fill"):
                if getattr(self, key) != defaults[key]:
                    raise SpecError(
                        f"field {self.name!r}: {key} is {getattr(self, key)!r} but kind is {self.kind!r}; "
                        f"{key} is for kind: numeric only"
                    )

    @property
    def numeric(self) -> bool:
        """A dense float input (``kind: numeric``): no tokens, no vocabulary."""
        return self.kind == "numeric"

    @property
    def needs_table(self) -> bool:
        """Encoded through a mapping table: categorical and without ``buckets``."""
        return self.buckets is None and not self.numeric

    @property
    def width(self) -> int:
        """Columns of the field's model input: ``size`` if numeric, else ``max_len``."""
        return self.size if self.numeric else self.max_len

    def normalize(self, token: str) -> str:
        """The key of ``token``: ``token.strip().lower()`` as this field configures it."""
        if self.strip:
            token = token.strip()
        if self.lower:
            token = token.lower()
        return token

    def to_dict(self, *, compact: bool = False) -> dict:
        """Plain mapping of the options (the form job files and manifests use);
        ``compact`` leaves out those at their defaults, as a job file would."""
        d = dataclasses.asdict(self)
        if compact:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            d = {
                k: v
                for k, v in d.items()
                if k == "name" or v != defaults.get(k) and not (k == "column" and v == self.name)
            }
        return d


# ---------------------------------------------------------------- job files
def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check(where: str, value, expected: str, ok: bool):
    if not ok:
        raise SpecError(f"{where}: expected {expected}, got {_describe(value)}")
    return value


def _str(where, v):
    return _check(where, v, "a string", isinstance(v, str) and v != "")


def _opt_str(where, v):
    return None if v is None else _str(where, v)


def _bool(where, v):
    return _check(where, v, "true or false", isinstance(v, bool))


def _pos_int(where, v):
    return _check(where, v, "a positive integer", _is_int(v) and v > 0)


def _opt_pos_int(where, v):
    return None if v is None else _pos_int(where, v)


def _pos_number(where, v):
    return _check(where, v, "a positive number", isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)


def _str_list(where, v):
    if isinstance(v, str):
        v = [v]
    _check(where, v, "a list of strings", isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v))
    return tuple(v)


def _opt_str_list(where, v):
    return None if v is None else _str_list(where, v)


def _mapping(where, v):
    return dict(_check(where, v, "a mapping", isinstance(v, dict)))


def _options(where, v):
    if not isinstance(v, dict):  # without the value: it may be a credential in the wrong place
        raise SpecError(f"{where}: expected a mapping like {{key: ..., secret: ...}}, got a {type(v).__name__}")
    return dict(v)


# Option names whose values are credentials, as fsspec backends spell them: key,
# secret, token, aws_access_key_id, account_key, sas_token, password, credentials,
# session, client_kwargs.auth, headers.Authorization...
_SECRET_NAME = re.compile(r"key|secret|token|passw|credential|auth|session|private", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
REDACTED = "***"


def redact_secrets(options):
    """A copy of ``options`` (``storage_options``) fit to write to a file or a log:
    at any depth, the values of credential-like keys become ``"***"``, and so do the
    user:password parts of URLs; everything else (``endpoint_url``, region...) stays."""
    if isinstance(options, dict):
        return {k: REDACTED if _SECRET_NAME.search(str(k)) else redact_secrets(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return type(options)(redact_secrets(v) for v in options)
    if isinstance(options, str):
        return _URL_USERINFO.sub(REDACTED + "@", options)
    return options


def _one_of(*choices):
    def check(where, v):
        return _check(where, v, "one of " + ", ".join(map(str, choices)), v in choices)

    return check


def _int_or(*words):
    def check(where, v):
        ok = (_is_int(v) and v > 0) or v in words
        return _check(where, v, "a positive integer or " + " or ".join(map(repr, words)), ok)

    return check


def _bytes(where, v):
    from dask.utils import parse_bytes

    try:
        n = parse_bytes(v) if isinstance(v, str) else v
    except ValueError:
        n = None
    return _check(where, v, "a byte count like 64MiB or 67108864", _is_int(n) and n > 0)


def _resources(where, v):
    ok = v is None or (
        isinstance(v, dict)
        and all(isinstance(k, str) and k and isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0
                for k, n in v.items())
    )  # fmt: skip
    return _check(where, v, "a mapping of resource name to a positive number, like {GPU: 1}, or null", ok)


def _memory(where, v):
    ok = v is None or (_is_int(v) and v > 0) or (isinstance(v, str) and v != "")
    return _check(where, v, "a byte count like 4GB or 4000000000, 'auto' or null", ok)


def _arrow_types(where, v):
    """``{column: Arrow type name}``; names as ``pyarrow.type_for_alias`` reads them."""
    import pyarrow as pa

    _check(where, v, "a mapping of column name to Arrow type name, like {user_id: string}", isinstance(v, dict))
    for column, name in v.items():
        try:
            pa.type_for_alias(name)
        except (ValueError, TypeError, KeyError):
            raise SpecError(
                f"{where}.{column}: expected an Arrow type name like string, int64, float64, date32 or "
                f"timestamp[ms], got {_describe(name)}"
            ) from None
    return dict(v)


def _one_char(where, v):
    return _check(where, v, "one character", isinstance(v, str) and len(v) == 1)


def _check_keys(data, where: str, allowed, required=()) -> None:
    """``data`` is a mapping of ``allowed`` keys holding every ``required`` one; errors name ``where.key``."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping, got {_describe(data)}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise SpecError(f"unknown key '{where}.{unknown[0]}'; allowed keys: {', '.join(allowed)}")
    for k in required:
        if k not in data:
            raise SpecError(f"missing required key '{where}.{k}'")


def _validate(spec, prefix: str) -> None:
    """Check (and normalize: lists to tuples...) each key of the frozen ``spec`` that its
    ``CHECKS`` name; errors name ``prefix + key``."""
    for key, check in spec.CHECKS.items():
        if check is not None:
            object.__setattr__(spec, key, check(f"{prefix}{key}", getattr(spec, key)))


FIELD_KEYS = tuple(f.name for f in dataclasses.fields(Field) if f.name != "_")


def field_from_dict(data, where: str) -> Field:
    """A ``Field`` from a job file's mapping; errors name ``where`` (e.g. ``fields[2]``)."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping like {{name: apps, kind: delimited}}, got {_describe(data)}")
    unknown = [k for k in data if k not in FIELD_KEYS]
    if unknown:
        raise SpecError(f"unknown key '{where}.{unknown[0]}'; allowed keys: {', '.join(FIELD_KEYS)}")
    if "name" not in data:
        raise SpecError(f"missing required key '{where}.name'")
    try:
        return Field(**data)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None


@dataclass(frozen=True)
class ModelSpec:
    """How to load and call the model: the job file's ``model`` section, validated when
    constructed (a ``SpecError`` names the key, e.g. ``model.batch_size``).

    ``path`` is a TorchScript file, a ``torch.export`` program (``.pt2``), or, with
    ``factory: "package.module:function"``, a state_dict (loaded with
    ``weights_only=True``) for the module that ``function(**factory_kwargs)`` builds.
    ``call`` is ``positional`` (one int64 tensor per field, in field order) or
    ``keyword`` (``model(**{field name: tensor})``). ``inputs: jagged`` passes each
    categorical field as the pair ``values, offsets`` (int64, ``offsets`` of length B,
    as ``nn.EmbeddingBag.forward(input, offsets)`` takes them), with truncation and
    no padding (a field's ``pad`` does not apply); by keyword as ``<field>_values``
    and ``<field>_offsets``. ``outputs`` names the score
    columns (default ``score``, or ``score_0..k-1`` for a (B, k) output).
    ``batch_size: auto`` and ``optimize`` are tuned per worker (``dscore.optimize``);
    an optimized mode is used only while it matches plain within ``tolerance``.
    ``precision: bf16 | fp16`` runs the forward pass under autocast (bf16 on CPU
    where torch supports it); ``dscore verify --against fp32`` shows what it costs.
    ``tf32: true`` lets float32 matrix products and convolutions on CUDA use
    TensorFloat-32 (faster on Ampere and later, about 1e-3 relative error); off by
    default, so that fp32 means IEEE fp32. It has no effect on CPU.
    ``fields`` names the job's fields this model takes, in the order it takes them
    (positional call); default: every field, in the job's order.
    """

    path: str
    _: KW_ONLY
    format: str = "auto"
    factory: str | None = None
    factory_kwargs: dict = dataclasses.field(default_factory=dict)
    call: str = "positional"
    inputs: str = "padded"
    outputs: tuple | None = None
    batch_size: int | str = "auto"
    device: str = "auto"
    optimize: str = "auto"
    tolerance: float = 1e-6
    precision: str = "fp32"
    tf32: bool = False
    threads: int | None = None
    trust_model: bool = False
    fields: tuple | None = None

    CHECKS = {
        "path": _str,
        "format": _one_of("auto", "torchscript", "export", "state_dict", "pickle", "onnx"),
        "factory": _opt_str,
        "factory_kwargs": _mapping,
        "call": _one_of("positional", "keyword"),
        "inputs": _one_of(*MODEL_INPUTS),
        "outputs": _opt_str_list,
        "batch_size": _int_or("auto"),
        "device": lambda w, v: _check(
            w, v, "auto, cpu, cuda or cuda:N", isinstance(v, str) and (v in ("auto", "cpu", "cuda") or _cuda_n(v))
        ),
        "optimize": _one_of("none", "freeze", "compile", "auto"),
        "tolerance": _pos_number,
        "precision": _one_of("fp32", "bf16", "fp16"),
        "tf32": _bool,
        "threads": _opt_pos_int,
        "trust_model": _bool,
        "fields": _opt_str_list,  # names checked against the job's fields by JobSpec
    }

    def __post_init__(self):
        _validate(self, "model.")

    @classmethod
    def from_dict(cls, data, where: str = "model") -> ModelSpec:
        """A ``ModelSpec`` from a job file's ``model`` (a mapping, or the path alone);
        errors name ``where`` (``models.car`` for an entry of ``models``)."""
        if isinstance(data, str):
            data = {"path": data}
        _check_keys(data, where, cls.CHECKS, required=("path",))
        try:
            return cls(**data)
        except SpecError as e:
            if where == "model" or not str(e).startswith("model."):
                raise
            raise SpecError(f"{where}.{str(e)[len('model.') :]}") from None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["outputs"] = list(self.outputs) if self.outputs else None
        if self.fields is None:  # absent, as before the key existed
            del d["fields"]
        else:
            d["fields"] = list(self.fields)
        return d


@dataclass(frozen=True)
class CsvSpec:
    """How CSV input is parsed (pyarrow's CSV reader): ``delimiter``, ``quote_char``
    (``false``: no quoting), ``header`` (the first line names the columns),
    ``column_names`` (with ``header: true`` they replace the header line's names;
    without a header and without names, columns are ``f0, f1, ...``), and
    ``column_types`` (``{column: Arrow type name}``). The id and field columns dscore
    reads are strings unless ``column_types`` types them, so that ids like ``00123``
    stay as they are written.
    """

    _: KW_ONLY
    delimiter: str = ","
    quote_char: str | bool = '"'
    header: bool = True
    column_names: tuple | None = None
    column_types: dict = dataclasses.field(default_factory=dict)

    CHECKS = {
        "delimiter": _one_char,
        "quote_char": lambda w, v: _check(
            w, v, "one character, or false for no quoting", v is False or (isinstance(v, str) and len(v) == 1)
        ),
        "header": _bool,
        "column_names": _opt_str_list,
        "column_types": _arrow_types,
    }

    def __post_init__(self):
        _validate(self, "csv.")

    @classmethod
    def from_dict(cls, data) -> CsvSpec:
        _check_keys(data, "csv", cls.CHECKS)
        return cls(**data)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["column_names"] = list(self.column_names) if self.column_names else None
        return d


def _cuda_n(v: str) -> bool:
    return v.startswith("cuda:") and v[5:].isdigit()


@dataclass(frozen=True)
class JobSpec:
    """A whole scoring job: the YAML job file (docs/design.md, "Job file"), validated
    when constructed; ``fields`` may hold ``Field`` objects or their mappings, ``model``
    a ``ModelSpec``, its mapping or a path. ``models`` instead of ``model``: several
    models scored in one pass, a mapping of name to any of those (or, from Python, a
    sequence of ``(name, spec)`` pairs; a name given twice is an error); each may set
    ``fields``, the fields it takes in its order (docs/design.md, section 3).

    Precedence of values: explicit arguments (``dscore.run(job, **overrides)``,
    ``--set key=value``) over the job file over the defaults here. ``partition_bytes``
    and ``lock_timeout`` default to the ``dscore.partition-bytes`` and
    ``dscore.lease.timeout`` settings (``dscore.config``), read when the spec is made.

    ``encode_device``: ``auto`` encodes on the GPU when the worker's model is on CUDA
    and numba.cuda can run kernels there, else on the CPU; ``cpu`` always on the CPU;
    ``cuda`` always on the GPU (an error on a worker without one). ``cluster:
    local-cuda`` starts a ``dask_cuda.LocalCUDACluster``: one worker per visible GPU.
    ``resources`` (e.g. ``{GPU: 1}``) are Dask worker resources each task asks for.
    ``csv`` (``CsvSpec``) says how CSV input is parsed and typed. ``partition_types``
    types the columns that hive-style ``key=value`` input directories give their files'
    rows (``{key: Arrow type name}``; string by default).
    ``lock_timeout``: seconds without renewal after which another run may take over
    the output's lease (``dscore.lease``); the holder renews it
    ``lease.renewals-per-timeout`` times as often.
    """

    input: tuple
    output: str
    fields: tuple
    model: ModelSpec | None = None
    _: KW_ONLY
    models: dict | None = None
    vocab: str | None = None
    id_columns: tuple = ()
    storage_options: dict = dataclasses.field(default_factory=dict, repr=False)  # credentials
    cluster: str = "local"
    encode_device: str = "auto"
    resources: dict | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | int | None = "auto"
    partition_rows: int = 1_048_576
    partition_bytes: int | str | None = None
    on_bad_input: str = "fail"
    retries: int = 2
    csv: CsvSpec | None = None
    partition_types: dict = dataclasses.field(default_factory=dict)
    lock_timeout: float | None = None
    source: str = "<dict>"

    CHECKS = {
        "input": _str_list,
        "output": _str,
        "fields": None,  # checked by __post_init__
        "model": None,
        "models": None,
        "vocab": _opt_str,
        "id_columns": _str_list,
        "storage_options": _options,
        "cluster": _str,
        "encode_device": _one_of(*ENCODE_DEVICES),
        "resources": _resources,
        "workers": _opt_pos_int,
        "threads_per_worker": _opt_pos_int,
        "memory_limit": _memory,
        "partition_rows": _pos_int,
        "partition_bytes": _bytes,
        "on_bad_input": _one_of("fail", "quarantine"),
        "retries": lambda w, v: _check(w, v, "a non-negative integer", _is_int(v) and v >= 0),
        "csv": lambda w, v: v if v is None or isinstance(v, CsvSpec) else CsvSpec.from_dict(v),
        "partition_types": _arrow_types,
        "lock_timeout": _pos_number,
    }
    REQUIRED = ("input", "output", "fields")  # and model or models

    def __post_init__(self):
        fields = self.fields
        if not isinstance(fields, (list, tuple)) or not fields:
            raise SpecError(f"fields: expected a non-empty list of fields, got {_describe(fields)}")
        fields = tuple(f if isinstance(f, Field) else field_from_dict(f, f"fields[{i}]") for i, f in enumerate(fields))
        names = [f.name for f in fields]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise SpecError(f"fields: field {dup!r} is given twice; names must be unique")
        object.__setattr__(self, "fields", fields)
        if self.model is not None and self.models is not None:
            raise SpecError(
                "model and models are both given; a job names one model (model:) or several by name (models:), not both"
            )
        if self.models is not None:
            object.__setattr__(self, "models", parse_models(self.models))
        elif self.model is None:
            raise SpecError("missing required key 'model' (or 'models', a mapping of model name to model spec)")
        elif not isinstance(self.model, ModelSpec):
            object.__setattr__(self, "model", ModelSpec.from_dict(self.model))
        for name, spec in self.named_models:
            check_model_fields(spec, names, "model" if name is None else f"models.{name}")
        if self.partition_bytes is None:
            object.__setattr__(self, "partition_bytes", config.get("partition-bytes"))
        if self.lock_timeout is None:
            object.__setattr__(self, "lock_timeout", float(config.get("lease.timeout")))
        _validate(self, "")
        if self.vocab is None and any(f.needs_table for f in fields):
            need = [f.name for f in fields if f.needs_table]
            raise SpecError(f"missing required key 'vocab' (fields {need} use mapping tables)")

    @property
    def named_models(self) -> tuple:
        """``((name, ModelSpec), ...)``: the entries of ``models`` in their order, or
        ``((None, model),)`` for a job's single ``model`` (whose columns keep their
        names: ``score``, ``score_0..k-1`` or its ``outputs``)."""
        if self.models is not None:
            return tuple(self.models.items())
        return ((None, self.model),)

    @classmethod
    def from_dict(cls, data, source: str = "<dict>") -> JobSpec:
        """Validate a job mapping; every error is one line naming ``source`` and the key."""
        if not isinstance(data, dict):
            raise SpecError(
                f"{source}: a job is a mapping of keys (input, output, fields, model, ...), got {_describe(data)}"
            )
        try:
            unknown = [k for k in data if k not in cls.CHECKS]
            if unknown:
                raise SpecError(f"unknown key '{unknown[0]}'; allowed keys: {', '.join(cls.CHECKS)}")
            for k in cls.REQUIRED:
                if k not in data:
                    raise SpecError(f"missing required key '{k}'")
            return cls(**data, source=source)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None

    @classmethod
    def load(cls, job, overrides: dict | None = None) -> JobSpec:
        """A ``JobSpec`` from a JobSpec, a mapping or a YAML path, with dotted ``overrides``."""
        if isinstance(job, JobSpec):
            if not overrides:
                return job
            data, source = job.to_dict(), job.source
        elif isinstance(job, dict):
            data, source = dict(job), "<dict>"
        else:
            data, source = _read_yaml(str(job)), str(job)
        for key, value in (overrides or {}).items():
            if key.split(".")[0] == "model" and data.get("models") is not None:
                names = ", ".join(f"models.{n}.{key[6:]}" for n in data["models"]) or "models.<name>"
                raise SpecError(f"--set {key}: this job names its models under models:; set {names}")
            set_dotted(data, key, value)
        return cls.from_dict(data, source)

    def to_dict(self, *, redact: bool = False) -> dict:
        """The job as a mapping (``from_dict`` reads it back). ``redact`` hides the
        credentials in ``storage_options`` (see ``redact_secrets``): use it for every copy
        that is written to a file or printed."""
        d = {k: getattr(self, k) for k in self.CHECKS if k not in ("fields", "model", "models")}
        if redact:
            d["storage_options"] = redact_secrets(self.storage_options)
        d["input"] = list(self.input)
        d["id_columns"] = list(self.id_columns)
        d["fields"] = [f.to_dict() for f in self.fields]
        if self.models is not None:
            d["models"] = {name: spec.to_dict() for name, spec in self.models.items()}
        else:
            d["model"] = self.model.to_dict()
        d["csv"] = self.csv.to_dict() if self.csv else None
        return d


# A model's name becomes a score column's name and a --set key (models.<name>.batch_size).
_MODEL_NAME = re.compile(r"[^.\s]+")


def parse_models(models) -> dict:
    """``models`` (a mapping of name to model spec, or from Python a sequence of
    ``(name, spec)`` pairs) as ``{name: ModelSpec}``; errors name ``models.<name>``."""
    if isinstance(models, dict):
        pairs = list(models.items())
    elif isinstance(models, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in models):
        pairs = [tuple(p) for p in models]
    else:
        raise SpecError(
            f"models: expected a mapping of model name to model spec, like {{car: {{path: car.pt}}}}, "
            f"got {_describe(models)}"
        )
    if not pairs:
        raise SpecError(
            "models: is empty; name at least one model, like {car: {path: car.pt}}, or use model: for one model"
        )
    out: dict = {}
    for name, spec in pairs:
        if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
            raise SpecError(
                f"models: model name {name!r} is not a name; expected a non-empty string without dots or spaces "
                "(it names the model's score columns)"
            )
        if name in out:
            raise SpecError(f"models.{name}: the model name {name!r} is used twice; give each model its own name")
        out[name] = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec, f"models.{name}")
    return out


def check_model_fields(spec: ModelSpec, names: list, where: str) -> None:
    """``spec.fields`` names fields of the job (``names``), each once."""
    if spec.fields is None:
        return
    if not spec.fields:
        raise SpecError(f"{where}.fields: is empty; list the job's fields this model takes, or leave it out for all")
    for i, name in enumerate(spec.fields):
        if name not in names:
            raise SpecError(f"{where}.fields[{i}]: no field is named {name!r}; the job's fields are {names}")
        if name in spec.fields[:i]:
            raise SpecError(f"{where}.fields[{i}]: field {name!r} is listed twice")


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            text = f.read()
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise SpecError(f"job file {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    return {} if data is None else data


def _refuse_duplicate_keys(node, where: str = "") -> None:
    """A key given twice in one YAML mapping is an error naming it (``models.car``):
    YAML loaders keep the last silently, so a job naming two models ``car`` would
    score with one of them."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{where}[{i}]")
    elif isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            path = f"{where}.{name}" if where else str(name)
            if name is not None and name != "<<":
                if name in seen:
                    what = f"the model name {name!r} is used" if where == "models" else f"key {name!r} is given"
                    raise SpecError(
                        f"{path}: {what} twice (lines {seen[name] + 1} and {key.start_mark.line + 1}); YAML would "
                        "keep only the last, so give each its own name"
                    )
                seen[name] = key.start_mark.line
            _refuse_duplicate_keys(value, path)


def set_dotted(data: dict, key: str, value) -> None:
    """``data[a][b] = value`` for ``key == "a.b"`` (``--set model.batch_size=4096``)."""
    parts = key.split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        shorthand = p == "model" if i == 0 else (i == 1 and parts[0] == "models")
        if isinstance(node.get(p), str) and shorthand:  # model: path shorthand (also models.<name>: path)
            node[p] = {"path": node[p]}
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {key}: '{p}' is not a mapping")
    node[parts[-1]] = value


def parse_set(items) -> dict:
    """``["a.b=1", ...]`` to ``{"a.b": 1}``; values are parsed as YAML scalars."""
    import yaml

    out = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. model.batch_size=4096")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out
