"""The errors dscore raises for what a user can fix: a spec, a model, an input, a job.

Every one derives from ``DscoreError``. The CLI prints a ``DscoreError`` as one line
and exits with status 1; any other exception is a bug in dscore and is shown with
its traceback (``-v`` shows tracebacks for every error).
"""


class DscoreError(Exception):
    """Base class of dscore's errors; the message names the file, column, field or key at fault."""


class SpecError(DscoreError, ValueError):
    """A job file, field or model spec that is invalid; the message names the key."""


class ModelError(DscoreError, ValueError):
    """A model that cannot be loaded or called as the job says; names the file."""


class JobError(DscoreError, RuntimeError):
    """The job cannot run or did not finish; the message says why and what to do."""
