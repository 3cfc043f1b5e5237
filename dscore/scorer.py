"""``Scorer``: dscore's Python API over a user's dask DataFrame.

``Scorer.score(ddf)`` is one lazy ``map_partitions`` of the per-partition function
(``pipeline.score_table``) with the model resident in each worker; unlike
``dscore.run`` it writes nothing and keeps no records: the caller owns the graph.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from . import config
from .cluster import register
from .encoding import check_fields
from .pipeline import score_table
from .plan import ModelTask, TaskSpec, probe_models
from .spec import ENCODE_DEVICES, ModelSpec, SpecError, check_model_fields, parse_models


class Scorer:
    """Score dask DataFrames with a worker-resident model.

    Parameters
    ----------
    model : str or ModelSpec
        Model file (see ``ModelSpec``); keyword options such as ``batch_size``,
        ``device``, ``call``, ``outputs``, ``factory`` build the spec from a path.
    fields : sequence of Field
    models : mapping of name to str, ModelSpec or its mapping, optional
        Several models instead of ``model``, as a job's ``models``: each partition is
        encoded once and every model scores it, into the columns named after it
        (``car``, or ``car_0..k-1``, or ``car_<output>``), fed only its own
        ``fields`` (default: all, in ``fields`` order).
    vocab : str or Vocabulary, optional
        Directory of mapping tables (a loaded ``Vocabulary`` must come from one:
        workers load tables themselves; they are never shipped in the graph).
    id_columns : sequence of str
        Columns copied to the output before the scores.
    encode_device : {"auto", "cpu", "cuda"}
        Where workers encode (``JobSpec``'s key of that name): ``auto`` on the GPU
        when the model is on CUDA and numba.cuda can run kernels, else on the CPU.

    Examples
    --------
    >>> scorer = Scorer("model.pt", fields, "vocab/", id_columns=["user_id"])  # doctest: +SKIP
    >>> scorer.register(client)                                                # doctest: +SKIP
    >>> scores = scorer.score(ddf)          # lazy: id columns + score columns  # doctest: +SKIP
    """

    def __init__(
        self,
        model=None,
        fields=None,
        vocab=None,
        *,
        models=None,
        id_columns=(),
        storage_options=None,
        encode_device="auto",
        **model_options,
    ):
        from .vocab import Vocabulary

        if fields is None:
            raise TypeError("Scorer needs fields: the Field objects the models take")
        fields = tuple(fields)
        check_fields(fields)
        if encode_device not in ENCODE_DEVICES:
            raise SpecError(f"encode_device is {encode_device!r}; expected one of {', '.join(ENCODE_DEVICES)}")
        so = dict(storage_options or {})
        if models is not None:
            if model is not None or model_options:
                raise SpecError("model and models are both given; a Scorer takes one model or several by name")
            named = list(parse_models(models).items())
        elif model is None:
            raise TypeError("Scorer needs a model (or models: a mapping of name to model)")
        else:
            spec = model if isinstance(model, ModelSpec) else ModelSpec(path=str(model), **model_options)
            if isinstance(model, ModelSpec) and model_options:
                spec = dataclasses.replace(spec, **model_options)
            named = [(None, spec)]
        names = [f.name for f in fields]
        for name, spec in named:
            check_model_fields(spec, names, "model" if name is None else f"models.{name}")
        if isinstance(vocab, Vocabulary):
            if vocab.source.startswith(("<", "fit(")):
                raise TypeError("Scorer needs the vocabulary's directory: save it (vocab.save(path)) and pass the path")
            vocab = vocab.source
        needs_tables = any(f.needs_table for f in fields)
        loaded = Vocabulary.load(vocab, fields=fields, storage_options=so) if (vocab and needs_tables) else None
        if needs_tables and loaded is None:
            raise SpecError("fields without buckets need a vocab directory of mapping tables")
        entries = tuple(ModelTask(name, spec, None, tuple(spec.fields or names)) for name, spec in named)
        self.task = TaskSpec(
            fields=fields,
            models=probe_models(entries, fields, tuple(id_columns), storage_options=so),
            vocab=vocab if loaded is not None else None,
            vocab_fp=loaded.fingerprint() if loaded is not None else None,
            id_columns=tuple(id_columns),
            storage_options=so,
            encode_device=encode_device,
            settings=config.snapshot(),
        )
        self.outputs = self.task.outputs

    def register(self, client, torch_threads=None) -> None:
        """Set up dscore's worker plugin on ``client``'s workers (threads and model cache)."""
        register(client, torch_threads)

    def score_table(self, table) -> pa.Table:
        """Score an Arrow table (or pandas frame) in this process."""
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        return score_table(table, self.task).table

    def score(self, ddf):
        """A lazy dask DataFrame: ``id_columns`` then the score columns, partition for partition."""
        import pandas as pd

        missing = [c for c in self.task.columns if c not in ddf.columns]
        if missing:
            raise SpecError(f"column {missing[0]!r} is not in the dask DataFrame; columns are {list(ddf.columns)}")
        meta = pd.DataFrame(
            {
                **{c: ddf._meta[c] for c in self.task.id_columns},
                **{n: pd.Series([], dtype="float32") for n in self.outputs},
            }
        )
        return ddf[self.task.columns].map_partitions(_score_frame, self.task, meta=meta)


def _score_frame(df, task: TaskSpec):
    """One partition of ``Scorer.score``: a pandas frame in, its scores out."""
    with config.using(task.settings):
        scored = score_table(pa.Table.from_pandas(df, preserve_index=False), task).table
    result = scored.to_pandas()
    result.index = df.index
    for c in task.id_columns:  # keep the caller's dtypes for the id columns
        result[c] = df[c]
    return result
