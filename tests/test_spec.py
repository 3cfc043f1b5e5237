"""Field validation: every bad option names the field, the key, what was found and what is allowed."""

from __future__ import annotations

import pytest

from dscore import Field
from dscore.errors import SpecError


def test_defaults_and_repr():
    f = Field("apps")
    assert (f.column, f.kind, f.sep, f.max_len, f.truncate, f.pad, f.lower, f.strip, f.buckets) == (
        "apps", "delimited", ",", 1, "head", "right", True, True, None,
    )  # fmt: skip
    assert "Field(name='apps'" in repr(f)
    assert Field("x", column="c").column == "c"
    with pytest.raises(TypeError):
        Field("x", "c")  # options are keyword-only
    with pytest.raises(AttributeError):
        f.max_len = 3  # frozen


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"kind": "csv"}, ValueError, r"field 'f': kind is 'csv'; expected one of delimited, list, scalar"),
        ({"max_len": 0}, ValueError, r"field 'f': max_len is 0; expected a positive integer"),
        ({"max_len": -3}, ValueError, r"field 'f': max_len is -3; expected a positive integer"),
        ({"max_len": 2.5}, SpecError, r"field 'f': max_len is 2.5; expected a positive integer"),
        ({"max_len": True}, SpecError, r"field 'f': max_len is True"),
        ({"truncate": "middle"}, ValueError, r"field 'f': truncate is 'middle'; expected one of head, tail"),
        ({"pad": "both"}, ValueError, r"field 'f': pad is 'both'; expected one of right, left"),
        ({"sep": ""}, SpecError, r"field 'f': sep is ''; expected a non-empty string"),
        ({"lower": "yes"}, SpecError, r"field 'f': lower is 'yes'; expected true or false"),
        ({"buckets": 0}, ValueError, r"field 'f': buckets is 0; expected an integer from 1 to"),
        ({"buckets": 2**31}, ValueError, r"field 'f': buckets is 2147483648"),
        ({"buckets": "10"}, SpecError, r"field 'f': buckets is '10'; expected a positive integer or null"),
        ({"column": 3}, SpecError, r"field 'f': column is 3; expected a column name"),
        (
            {"on_invalid_utf8": "skip"},
            ValueError,
            r"field 'f': on_invalid_utf8 is 'skip'; expected one of fail, replace",
        ),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Field("f", **kwargs)


def test_bad_names():
    with pytest.raises(SpecError, match="field name must be a non-empty string"):
        Field("")
    with pytest.raises(ValueError, match="without path separators"):
        Field("a/b")


def test_normalize_is_python():
    assert Field("f").normalize("  ΑΣ \u2003") == "ας"
    assert Field("f", lower=False).normalize(" A ") == "A"
    assert Field("f", strip=False).normalize(" A ") == " a "


# ---------------------------------------------------------------- job files
from dscore import JobSpec, ModelSpec  # noqa: E402
from dscore.spec import parse_set  # noqa: E402

JOB = {
    "input": "data/*.parquet",
    "output": "out/",
    "vocab": "vocab/",
    "id_columns": ["user_id"],
    "fields": [{"name": "apps", "max_len": 64}, {"name": "campaigns", "kind": "list", "max_len": 16}],
    "model": {"path": "model.pt", "batch_size": 8192, "device": "auto"},
}


def test_job_roundtrip_and_defaults():
    job = JobSpec.from_dict(JOB)
    assert job.input == ("data/*.parquet",) and job.fields[1].kind == "list"
    assert job.model == ModelSpec("model.pt", batch_size=8192)
    assert job.cluster == "local" and job.on_bad_input == "fail"
    assert JobSpec.from_dict(job.to_dict(), "x") == JobSpec.from_dict(JOB, "x")
    assert JobSpec.from_dict({**JOB, "model": "m.pt"}).model.path == "m.pt"  # shorthand


@pytest.mark.parametrize(
    "change, match",
    [
        ({"outptu": "x"}, r"^j.yaml: unknown key 'outptu'; allowed keys: input, output,"),
        (
            {"model": {"path": "m.pt", "batchsize": 3}},
            r"^j.yaml: unknown key 'model.batchsize'; allowed keys: path, format,",
        ),
        (
            {"fields": [{"name": "a", "maxlen": 3}]},
            r"^j.yaml: unknown key 'fields\[0\].maxlen'; allowed keys: name, column,",
        ),
        ({"model": {"batch_size": 3}}, r"^j.yaml: missing required key 'model.path'$"),
        ({"fields": [{"kind": "list"}]}, r"^j.yaml: missing required key 'fields\[0\].name'$"),
        (
            {"model": {"path": "m.pt", "batch_size": "big"}},
            r"^j.yaml: model.batch_size: expected a positive integer or 'auto', got 'big' \(str\)$",
        ),
        ({"model": {"path": "m.pt", "device": "gpu"}}, r"model.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"partition_rows": 0}, r"^j.yaml: partition_rows: expected a positive integer, got 0 \(int\)$"),
        ({"id_columns": [1]}, r"id_columns: expected a list of strings, got \[1\]"),
        ({"on_bad_input": "skip"}, r"on_bad_input: expected one of fail, quarantine, got 'skip'"),
        (
            {"fields": [{"name": "a", "max_len": 0}]},
            r"^j.yaml: fields\[0\]: field 'a': max_len is 0; expected a positive integer$",
        ),
        (
            {"fields": [{"name": "a", "on_invalid_utf8": "ignore"}]},
            r"^j.yaml: fields\[0\]: field 'a': on_invalid_utf8 is 'ignore'; expected one of fail, replace$",
        ),
        ({"fields": []}, r"fields: expected a non-empty list"),
        ({"fields": [{"name": "a"}, {"name": "a"}]}, r"field 'a' is given twice"),
        ({"vocab": None}, r"missing required key 'vocab' \(fields \['apps', 'campaigns'\] use mapping tables\)"),
        (
            {"csv": {"sep": ";"}},
            r"^j.yaml: unknown key 'csv.sep'; allowed keys: delimiter, quote_char, header, column_names",
        ),
        ({"csv": {"delimiter": ";;"}}, r"^j.yaml: csv.delimiter: expected one character, got ';;' \(str\)$"),
        ({"csv": {"quote_char": True}}, r"csv.quote_char: expected one character, or false for no quoting, got True"),
        ({"csv": {"header": "no"}}, r"csv.header: expected true or false, got 'no' \(str\)"),
        ({"csv": {"column_names": [1, 2]}}, r"csv.column_names: expected a list of strings"),
        ({"csv": ";"}, r"^j.yaml: csv: expected a mapping, got ';' \(str\)$"),
        (
            {"csv": {"column_types": {"user_id": "int"}}},
            r"^j.yaml: csv.column_types.user_id: expected an Arrow type name like string, int64, .*got 'int' \(str\)$",
        ),
        (
            {"csv": {"column_types": ["user_id"]}},
            r"csv.column_types: expected a mapping of column name to Arrow type name",
        ),
        ({"partition_types": {"date": "datetime"}}, r"^j.yaml: partition_types.date: expected an Arrow type name like"),
    ],
)
def test_job_errors_name_the_key(change, match):
    data = {**JOB, **change}
    if "model" in change and "path" not in change["model"] and isinstance(change["model"], dict):
        data["model"] = change["model"]
    for k, v in change.items():
        if v is None:
            data.pop(k)
    with pytest.raises(SpecError, match=match):
        JobSpec.from_dict(data, "j.yaml")


def test_csv_section_roundtrip():
    csv = {"delimiter": ";", "quote_char": False, "header": False, "column_names": ["user_id", "apps"],
           "column_types": {"user_id": "int64"}}  # fmt: skip
    job = JobSpec.from_dict({**JOB, "csv": csv, "partition_types": {"date": "date32"}})
    assert job.csv.delimiter == ";" and job.csv.column_names == ("user_id", "apps") and job.csv.quote_char is False
    assert job.to_dict()["csv"] == csv and job.partition_types == {"date": "date32"}
    assert JobSpec.from_dict(job.to_dict()) == job
    assert JobSpec.from_dict(JOB).csv is None  # CSV input still reads with the defaults


def test_missing_top_level_key():
    data = dict(JOB)
    del data["output"]
    with pytest.raises(SpecError, match=r"^j.yaml: missing required key 'output'$"):
        JobSpec.from_dict(data, "j.yaml")


def test_yaml_file_and_overrides(tmp_path):
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB))
    job = JobSpec.load(str(path), parse_set(["model.batch_size=1024", "cluster=tcp://h:8786", "id_columns=[a, b]"]))
    assert job.model.batch_size == 1024 and job.cluster == "tcp://h:8786" and job.id_columns == ("a", "b")
    assert job.source == str(path)
    with pytest.raises(SpecError, match=r"job file '.*nope.yaml' does not exist"):
        JobSpec.load(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("input: [unclosed")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML"):
        JobSpec.load(str(tmp_path / "bad.yaml"))
    with pytest.raises(SpecError, match=r"--set 'model.batch_size': expected KEY=VALUE"):
        parse_set(["model.batch_size"])


def test_secrets_are_redacted_where_jobs_are_written_or_shown():
    from dscore import plan
    from dscore.plan import TaskSpec
    from dscore.spec import redact_secrets

    so = {
        "key": "AKIAFAKE", "secret": "s3cr3t", "anon": False, "profile": "prod",
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu", "aws_session_token": "tok"},
        "headers": {"Authorization": "Bearer abc"}, "account_key": "k", "sas_token": "sas", "password": "pw",
        "endpoints": ["https://user:pw@host/x"],
    }  # fmt: skip
    assert redact_secrets(so) == {
        "key": "***", "secret": "***", "anon": False, "profile": "prod",
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu", "aws_session_token": "***"},
        "headers": {"Authorization": "***"}, "account_key": "***", "sas_token": "***", "password": "***",
        "endpoints": ["https://***@host/x"],
    }  # fmt: skip
    assert so["key"] == "AKIAFAKE"  # a copy
    job = JobSpec.from_dict({**JOB, "storage_options": so})
    assert job.to_dict()["storage_options"] == so  # the round trip keeps them
    assert job.to_dict(redact=True)["storage_options"] == redact_secrets(so)
    task = TaskSpec(job.fields, plan.model_tasks(job), None, None, (), storage_options=so)
    for shown in (repr(job), repr(task)):
        assert "AKIAFAKE" not in shown and "s3cr3t" not in shown
    with pytest.raises(
        SpecError,
        match=r"^<dict>: storage_options: expected a mapping like \{key: \.\.\., secret: \.\.\.\}, got a str$",
    ):
        JobSpec.from_dict({**JOB, "storage_options": "AKIAFAKE:s3cr3t"})


# ---------------------------------------------------------------- the Python API checks as a job file does
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ModelSpec("m.pt", batch_size="big"), r"^model.batch_size: expected a positive integer or 'auto'"),
        (lambda: ModelSpec("m.pt", device="gpu"), r"^model.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
        (lambda: ModelSpec("", call="keyword"), r"^model.path: expected a string, got '' \(str\)$"),
        (lambda: JobSpec("in/", "out/", [Field("a")], "m.pt", vocab="v/", partition_rows=0),
         r"^partition_rows: expected a positive integer, got 0 \(int\)$"),
        (lambda: JobSpec("in/", "out/", [Field("a")], {"path": "m.pt", "tolerance": -1}, vocab="v/"),
         r"^model.tolerance: expected a positive number, got -1 \(int\)$"),
        (lambda: JobSpec("in/", "out/", [Field("a"), {"name": "a"}], "m.pt", vocab="v/"), r"field 'a' is given twice"),
        (lambda: JobSpec("in/", "out/", [{"name": "a", "max_len": 0}], "m.pt", vocab="v/"),
         r"^fields\[0\]: field 'a': max_len is 0; expected a positive integer$"),
        (lambda: JobSpec("in/", "out/", [Field("a")], "m.pt"), r"^missing required key 'vocab' \(fields \['a'\]"),
        (lambda: JobSpec("in/", "out/", [Field("a")], "m.pt", vocab="v/", csv={"delimiter": ";;"}),
         r"^csv.delimiter: expected one character"),
        (lambda: JobSpec("in/", "out/", [Field("a")], "m.pt", vocab="v/", partition_bytes="lots"),
         r"^partition_bytes: expected a byte count like 64MiB"),
    ],
)  # fmt: skip
def test_specs_validate_when_constructed(make, match):
    with pytest.raises(SpecError, match=match):
        make()


def test_constructed_job_equals_the_job_file():
    job = JobSpec(
        "data/*.parquet", "out/", [Field("apps", max_len=64), {"name": "campaigns", "kind": "list", "max_len": 16}],
        ModelSpec("model.pt", batch_size=8192, device="auto"), vocab="vocab/", id_columns=["user_id"],
    )  # fmt: skip
    assert job == JobSpec.from_dict(JOB)
    assert job.partition_bytes == "64MiB"  # the dscore.partition-bytes default


def test_partition_bytes_default_is_read_from_the_config():
    import dask

    with dask.config.set({"dscore.partition-bytes": "8MiB"}):
        assert JobSpec.from_dict(JOB).partition_bytes == "8MiB"
    assert JobSpec.from_dict({**JOB, "partition_bytes": 1000}).partition_bytes == 1000  # the job file wins


# ---------------------------------------------------------------- several models (models:)
MODELS = {k: v for k, v in JOB.items() if k != "model"}


def test_models_roundtrip_and_overrides(tmp_path):
    import yaml

    job = JobSpec.from_dict({**MODELS, "models": {"car": "car.pt", "house": {"path": "h.onnx", "batch_size": 1024,
                                                                             "fields": ["campaigns"]}}})  # fmt: skip
    assert job.model is None and list(job.models) == ["car", "house"]
    assert job.models["car"] == ModelSpec("car.pt") and job.models["house"].fields == ("campaigns",)
    assert [n for n, _ in job.named_models] == ["car", "house"]
    assert JobSpec.from_dict(job.to_dict()) == job
    assert "model" not in job.to_dict() and "fields" not in job.to_dict()["models"]["car"]
    assert JobSpec.from_dict(JOB).named_models == ((None, JobSpec.from_dict(JOB).model),)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job.to_dict()))
    over = JobSpec.load(str(path), parse_set(["models.house.batch_size=4096", "models.car.threads=2"]))
    assert over.models["house"].batch_size == 4096 and over.models["car"].threads == 2
    short = {**MODELS, "models": {"car": "car.pt"}}
    assert JobSpec.load(short, {"models.car.batch_size": 64}).models["car"] == ModelSpec("car.pt", batch_size=64)
    assert JobSpec.load(job, {"models.car.batch_size": 64}).models["car"].batch_size == 64  # from a JobSpec too
    with pytest.raises(SpecError, match=r"^--set model.batch_size: this job names its models under models:; set "
                                        r"models.car.batch_size, models.house.batch_size$"):  # fmt: skip
        JobSpec.load(job, {"model.batch_size": 64})


@pytest.mark.parametrize(
    "models, match",
    [
        ({}, r"^j.yaml: models: is empty; name at least one model"),
        ([], r"^j.yaml: models: is empty"),
        ("car.pt", r"^j.yaml: models: expected a mapping of model name to model spec, like \{car: \{path: car.pt\}\}"),
        ({"car": {"path": "c.pt", "batch_size": "big"}},
         r"^j.yaml: models.car.batch_size: expected a positive integer or 'auto', got 'big' \(str\)$"),
        ({"car": {"path": "c.pt", "batchsize": 3}}, r"^j.yaml: unknown key 'models.car.batchsize'; allowed keys: path,"),
        ({"car": {"batch_size": 3}}, r"^j.yaml: missing required key 'models.car.path'$"),
        ({"car": {"path": "c.pt", "fields": ["apps", "app"]}},
         r"^j.yaml: models.car.fields\[1\]: no field is named 'app'; the job's fields are \['apps', 'campaigns'\]$"),
        ({"car": {"path": "c.pt", "fields": ["apps", "apps"]}}, r"^j.yaml: models.car.fields\[1\]: field 'apps' is listed twice$"),
        ({"car": {"path": "c.pt", "fields": []}}, r"^j.yaml: models.car.fields: is empty"),
        ({"car": {"path": "c.pt", "fields": [3]}}, r"^j.yaml: models.car.fields: expected a list of strings, got \[3\]"),
        ({"a.b": "c.pt"}, r"^j.yaml: models: model name 'a.b' is not a name; expected a non-empty string without dots"),
        ({"": "c.pt"}, r"^j.yaml: models: model name '' is not a name"),
        ([("car", "c.pt"), ("car", "d.pt")], r"^j.yaml: models.car: the model name 'car' is used twice"),
    ],
)  # fmt: skip
def test_models_errors_name_the_key(models, match):
    with pytest.raises(SpecError, match=match):
        JobSpec.from_dict({**MODELS, "models": models}, "j.yaml")


def test_model_and_models_and_neither():
    with pytest.raises(SpecError, match=r"^j.yaml: model and models are both given; a job names one model"):
        JobSpec.from_dict({**JOB, "models": {"car": "c.pt"}}, "j.yaml")
    with pytest.raises(SpecError, match=r"^j.yaml: missing required key 'model' \(or 'models', a mapping of model"):
        JobSpec.from_dict(MODELS, "j.yaml")
    with pytest.raises(SpecError, match=r"^model.fields\[0\]: no field is named 'x'"):
        JobSpec(**{**MODELS, "input": ["data/"], "model": ModelSpec("m.pt", fields=["x"])})
    # the Python API: a name used twice in a sequence of pairs
    with pytest.raises(SpecError, match=r"^models.car: the model name 'car' is used twice"):
        JobSpec(**{**MODELS, "models": [("car", ModelSpec("c.pt")), ("car", "d.pt")]})


def test_a_key_given_twice_in_a_job_file_names_it(tmp_path):
    text = "\n".join([
        "input: data/", "output: out/", "fields: [{name: a, buckets: 5}]",
        "models:", "  car: {path: car.pt}", "  house: house.pt", "  car: {path: other.pt}",
    ])  # fmt: skip
    (tmp_path / "j.yaml").write_text(text)
    with pytest.raises(SpecError, match=r"j.yaml: models.car: the model name 'car' is used twice \(lines 5 and 7\)"):
        JobSpec.load(str(tmp_path / "j.yaml"))
    (tmp_path / "k.yaml").write_text("input: data/\noutput: out/\ninput: other/\n")
    with pytest.raises(SpecError, match=r"k.yaml: input: key 'input' is given twice \(lines 1 and 3\)"):
        JobSpec.load(str(tmp_path / "k.yaml"))
