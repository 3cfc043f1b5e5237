"""Jagged against padded inputs on the EmbeddingBag model of the speed benchmarks.

    python benchmarks/jagged.py [--rows 200000] [--rounds 5] [--threads N] [--workdir DIR]

``dscore.zoo``'s ``embedding_bag`` (``nn.EmbeddingBag(mode="mean", padding_idx=0)`` fed
padded ``(B, max_len)`` rows) against ``embedding_bag_jagged`` (the same weights fed
``values, offsets``, ``model.inputs: jagged``), on the data of ``dscore bench --models``
(~40 apps a row, max_len 64; built in ``--workdir`` or reused). One process, the same
rows: encode (``encode_table``, reused buffers) and predict (``Model.predict``, each
model at the batch size ``dscore.optimize`` tunes for it), the two alternating for
``--rounds`` rounds whose order rotates; medians. Prints rows/s of encode, predict
and both, the jagged/padded ratio, and the max |difference| of the scores.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows scored each round (and generated)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (encode is one thread)")
    ap.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "dscore", "bench-jagged"))
    args = ap.parse_args()

    from dscore import ModelSpec, Vocabulary, optimize, zoo
    from dscore.bench import _first_rows, prepare_models
    from dscore.demo import vocab_sizes
    from dscore.encoding import encode_table
    from dscore.model import Model, set_threads
    from dscore.spec import JobSpec

    set_threads(args.threads)
    job, variants = prepare_models(args.workdir, args.rows)
    spec = JobSpec.load(job)
    vocab = Vocabulary.load(spec.vocab, fields=spec.fields)
    padded_keys = {k.split(".", 1)[1]: v for k, v in variants["embedding_bag torchscript"].items()}
    # the same seed as prepare_models' export: the same weights
    jagged_keys = zoo.export(os.path.join(args.workdir, "models"), vocab_sizes(vocab), names=["embedding_bag_jagged"])
    models = {
        "padded": Model.load(ModelSpec(**padded_keys), spec.fields, device="cpu"),
        "jagged": Model.load(
            ModelSpec(**jagged_keys["embedding_bag_jagged"]["torchscript"], inputs="jagged"), spec.fields, device="cpu"
        ),
    }
    table = _first_rows(spec, args.rows)
    rows = table.num_rows
    buffers: dict = {k: {} for k in models}
    scores: dict = {}
    for inputs, model in models.items():  # compile the kernels, tune the batch on these rows
        arrays = encode_table(table, spec.fields, vocab, buffers=buffers[inputs], inputs=inputs)[0]
        model.batch_size, _ = optimize.autotune_batch(model, arrays)
    times: dict = {(k, s): [] for k in models for s in ("encode", "predict")}
    names = list(models)
    for r in range(args.rounds):
        for inputs in names[r % 2 :] + names[: r % 2]:
            t0 = time.perf_counter()
            arrays = encode_table(table, spec.fields, vocab, buffers=buffers[inputs], inputs=inputs)[0]
            t1 = time.perf_counter()
            scores[inputs] = models[inputs].predict(arrays)
            t2 = time.perf_counter()
            times[inputs, "encode"].append(t1 - t0)
            times[inputs, "predict"].append(t2 - t1)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch "
        f"threads; {rows:,} rows of the bench --models data; median of {args.rounds} alternating rounds"
    )
    print(f"{'inputs':<8}{'batch':>7}{'encode rows/s':>15}{'predict rows/s':>16}{'both rows/s':>13}")
    rate = {}
    for inputs, model in models.items():
        enc, pred = (float(np.median(times[inputs, s])) for s in ("encode", "predict"))
        both = float(np.median([a + b for a, b in zip(times[inputs, "encode"], times[inputs, "predict"])]))
        rate[inputs] = (rows / enc, rows / pred, rows / both)
        print(f"{inputs:<8}{model.batch_size:>7}{rows / enc:>15,.0f}{rows / pred:>16,.0f}{rows / both:>13,.0f}")
    ratio = [j / p for j, p in zip(rate["jagged"], rate["padded"])]
    print(f"{'ratio':<8}{'':>7}{ratio[0]:>14.2f}x{ratio[1]:>15.2f}x{ratio[2]:>12.2f}x  (jagged / padded)")
    diff = np.abs(scores["jagged"].astype(np.float64) - scores["padded"]).max()
    print(f"max |jagged - padded| = {diff:.1e}")


if __name__ == "__main__":
    main()
