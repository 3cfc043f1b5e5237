"""Field validation: every bad option names the field, the key, what was found and what is allowed."""

from __future__ import annotations

import pytest

from dscore import Field


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
        ({"max_len": 2.5}, TypeError, r"field 'f': max_len is 2.5; expected a positive integer"),
        ({"max_len": True}, TypeError, r"field 'f': max_len is True"),
        ({"truncate": "middle"}, ValueError, r"field 'f': truncate is 'middle'; expected one of head, tail"),
        ({"pad": "both"}, ValueError, r"field 'f': pad is 'both'; expected one of right, left"),
        ({"sep": ""}, TypeError, r"field 'f': sep is ''; expected a non-empty string"),
        ({"lower": "yes"}, TypeError, r"field 'f': lower is 'yes'; expected true or false"),
        ({"buckets": 0}, ValueError, r"field 'f': buckets is 0; expected an integer from 1 to"),
        ({"buckets": 2**31}, ValueError, r"field 'f': buckets is 2147483648"),
        ({"buckets": "10"}, TypeError, r"field 'f': buckets is '10'; expected a positive integer or null"),
        ({"column": 3}, TypeError, r"field 'f': column is 3; expected a column name"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Field("f", **kwargs)


def test_bad_names():
    with pytest.raises(TypeError, match="field name must be a non-empty string"):
        Field("")
    with pytest.raises(ValueError, match="without path separators"):
        Field("a/b")


def test_normalize_is_python():
    assert Field("f").normalize("  ΑΣ \u2003") == "ας"
    assert Field("f", lower=False).normalize(" A ") == "A"
    assert Field("f", strip=False).normalize(" A ") == " a "
