"""Score a dask DataFrame you already have, inside your own Dask work.

    python examples/score_dask_dataframe.py [--workdir dscore-example]

Uses the data, vocabulary and model that examples/quickstart.py (or `dscore
example`) left in --workdir.
"""

import argparse
import os

import dask.dataframe as dd
from distributed import Client, LocalCluster

import dscore
from dscore.demo import FIELDS


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="dscore-example")
    w = parser.parse_args().workdir
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        ddf = dd.read_parquet(os.path.join(w, "data"), dtype_backend="pyarrow")
        ddf = ddf[ddf.device_name.notnull()]  # any dask work before scoring

        scorer = dscore.Scorer(os.path.join(w, "model.pt"), FIELDS, os.path.join(w, "vocab"), id_columns=["user_id"])
        scorer.register(client)  # once per cluster: threads and the per-worker model cache
        scores = scorer.score(ddf)  # lazy: user_id, score

        top = scores.nlargest(5, "score").compute()
        print(top)
        scores.to_parquet(os.path.join(w, "scores-from-dataframe"), write_index=False)
        print("wrote", os.path.join(w, "scores-from-dataframe"))


if __name__ == "__main__":  # worker processes are spawned and re-import this file
    main()
