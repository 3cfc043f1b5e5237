"""The errors dscore raises for what a user can fix: a spec, a model, mapping tables,
an input, a job.

Every one derives from ``DscoreError``. The CLI prints a ``DscoreError`` as one line
and exits with status 1; any other exception is a bug in dscore and is shown with
its traceback (``-v`` shows tracebacks for every error). Errors about the values a
user gives derive from ``ValueError`` too, and ``JobError`` from ``RuntimeError``, so
``except ValueError`` code written before these classes keeps working.

Calling a Python function with the wrong kind of argument (a pandas frame where a
dask DataFrame is expected, say) stays a plain ``TypeError``/``ValueError``: no job
file or command line can cause it.
"""


class DscoreError(Exception):
    """Base class of dscore's errors; the message names the file, column, field or key at fault."""


class SpecError(DscoreError, ValueError):
    """A job file, field or model spec that is invalid; the message names the key."""


class ModelError(DscoreError, ValueError):
    """A model that cannot be loaded or called as the job says; names the file."""


class VocabError(DscoreError, ValueError):
    """Mapping tables that cannot be used as the fields say; names the tables and the field."""


class InputError(DscoreError, ValueError):
    """A bad input file, row group or column; the message names what is at fault.

    Raised in workers and re-raised in the client, so it pickles by its arguments.
    """

    def __init__(self, url: str, row_groups, column, reason: str):
        self.url, self.row_groups, self.column, self.reason = url, row_groups, column, reason
        where = url
        if row_groups is not None:
            where += f" (row groups {row_groups[0]}-{row_groups[1] - 1})"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        return (type(self), (self.url, self.row_groups, self.column, self.reason))


class JobError(DscoreError, RuntimeError):
    """The job cannot run or did not finish; the message says why and what to do."""
