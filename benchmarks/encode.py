"""Encode throughput: dscore's Numba kernels beside two baselines, in one run.

    python benchmarks/encode.py [--rows 1000000] [--python-rows 50000]
    python benchmarks/encode.py --sweep [--lengths 5,20,40] [--tables 10000,200000,2000000]
                                [--baseline REF] [--repeat 5]

Data: one delimited field, ~40 tokens per row from a Zipf vocabulary of 200k
package names, ~2% never-seen tokens, ~5% upper-cased or space-padded tokens.
Baselines: (a) pyarrow.compute split/trim/lower + index_in + numpy padding,
(b) a plain-Python per-row loop (on the first --python-rows rows).
Peak memory is measured in a child process (ru_maxrss before and after encode).

``--sweep`` times the kernel alone (one thread, tokens/s per core) across token
lengths, ASCII against mixed tokens (10% upper-cased, 1% with a non-ASCII letter)
and table sizes, and splits each token's time into its steps by timing fields
that stop after each: ``scan`` (split and strip: max_len 1, hashing mode),
``+copy+hash`` (every token's key built and hashed: hashing mode) and ``+lookup``
(the mapping table). ``--baseline REF`` (repeatable) runs the CPU kernels of git
revision REF too, interleaved with this tree's in the same process (medians of
``--repeat``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dscore import Field, Vocabulary
from dscore.demo import delimited_column, package_names
from dscore.encoding import encode_table

MAX_LEN = 64
FIELD = Field("apps", max_len=MAX_LEN)


def make_data(rows: int, path: str):
    rng = np.random.default_rng(0)
    vocab = package_names(200_000)
    col = delimited_column(rng, rows, vocab)
    pq.write_table(pa.table({"apps": col}), os.path.join(path, "data.parquet"), row_group_size=rows)
    table = pa.table({"token": vocab, "index": pa.array(np.arange(2, 2 + len(vocab), dtype=np.int32))})
    Vocabulary({"apps": table}).save(os.path.join(path, "vocab"))


def arrow_baseline(col: pa.ChunkedArray, vocab_tokens: pa.Array, vocab_index: np.ndarray) -> np.ndarray:
    lists = pc.split_pattern(col, ",")
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    flat = pc.utf8_lower(pc.utf8_trim_whitespace(lists.flatten()))
    pos = pc.index_in(flat, value_set=vocab_tokens).to_numpy(zero_copy_only=False)
    idx = np.where(np.isnan(pos), 1, vocab_index[np.nan_to_num(pos).astype(np.int64)]).astype(np.int32)
    nonempty = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(lists)), np.diff(lists.offsets.to_numpy()))
    rows, idx = rows[nonempty], idx[nonempty]
    starts = np.searchsorted(rows, np.arange(len(lists)))
    col_pos = np.arange(len(rows)) - starts[rows]
    keep = col_pos < MAX_LEN
    out = np.zeros((len(lists), MAX_LEN), dtype=np.int32)
    out[rows[keep], col_pos[keep]] = idx[keep]
    return out


def python_baseline(values: list, mapping: dict) -> np.ndarray:
    out = np.zeros((len(values), MAX_LEN), dtype=np.int32)
    for i, cell in enumerate(values):
        if cell is None:
            continue
        row = [mapping.get(k, 1) for k in (t.strip().lower() for t in cell.split(",")) if k][:MAX_LEN]
        out[i, : len(row)] = row
    return out


def timed(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), result


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_child(path: str) -> None:
    """Peak RSS above the RSS before encode, in a fresh process (Linux VmHWM, reset first)."""
    table = pq.read_table(os.path.join(path, "data.parquet"))
    vocab = Vocabulary.load(os.path.join(path, "vocab"))
    encode_table(table.slice(0, 10), [FIELD], vocab)  # compile/load kernels, build lookups
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _vm("VmRSS")
    arrays, _ = encode_table(table, [FIELD], vocab)
    print(_vm("VmHWM") - before, arrays["apps"].nbytes, table.nbytes)


# ---------------------------------------------------------------- sweep
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)
_NON_ASCII = list("éüøçñœ")  # two UTF-8 bytes each; upper() and lower() round-trip


def sweep_vocab(n: int, length: int, mixed: bool, seed: int = 0) -> list[str]:
    """``n`` distinct lowercase tokens of ``length`` bytes (a random stem, then the
    token's number in base 36); ``mixed``: 1% hold a non-ASCII letter (one byte more)."""
    rng = np.random.default_rng(seed)
    stem = max(length - 5, 0)
    stems = _LETTERS[rng.integers(0, 26, (n, stem))].view(f"S{stem}").ravel() if stem else [b""] * n
    tokens = [s.decode() + np.base_repr(i, 36).lower().rjust(5, "0") for i, s in enumerate(stems)]
    if mixed:
        for i in np.flatnonzero(rng.random(n) < 0.01):
            t = tokens[i]
            tokens[i] = t[:1] + _NON_ASCII[i % len(_NON_ASCII)] + t[2:]
    return tokens


def sweep_column(rng, vocab: list[str], tokens: int, mixed: bool) -> pa.Array:
    """Rows of 40 comma-separated tokens drawn by Zipf frequency; ``mixed``: 10% upper-cased."""
    from dscore.demo import zipf_ids

    ids = zipf_ids(rng, tokens, len(vocab))
    words = np.asarray(vocab, dtype=object)[ids]
    if mixed:
        upper = np.flatnonzero(rng.random(tokens) < 0.10)
        words[upper] = [w.upper() for w in words[upper]]
    return pa.array([",".join(words[i : i + 40]) for i in range(0, tokens, 40)], pa.string())


def load_kernels(ref: str):
    """``dscore/kernels/cpu.py`` as it is at git revision ``ref``, as a module of its own."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = ["git", "-C", root, "show", f"{ref}:dscore/kernels/cpu.py"]
    src = subprocess.run(git, capture_output=True, text=True, check=True).stdout
    where = os.path.join(os.path.expanduser("~"), ".cache", "dscore", "bench")
    os.makedirs(where, exist_ok=True)
    name = "cpu_" + "".join(c if c.isalnum() else "_" for c in ref)
    path = os.path.join(where, name + ".py")
    if not os.path.exists(path) or open(path).read() != src:  # kept, so that numba's cache stays valid
        with open(path, "w") as f:
            f.write(src)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache finds a kernel's module by name
    spec.loader.exec_module(module)
    return module


class Kernels:
    """One revision's CPU kernels, called as ``encoding`` calls them, on prepared buffers."""

    def __init__(self, module, label):
        self.module, self.label = module, label
        # revisions before on_invalid_utf8 take a 6-item spec and no ``bad`` argument
        self.new = module.ENCODE_ROWS[module.DELIMITED].py_func.__code__.co_argcount > 16

    def table(self, vocab: list[str]):
        arr = pa.array(vocab, pa.string())
        offsets = np.frombuffer(arr.buffers()[1], np.int32)[: len(arr) + 1].astype(np.int64)
        data = np.frombuffer(arr.buffers()[2], np.uint8)
        capacity = 1 << max(4, int(2 * len(vocab) - 1).bit_length())
        return self.module.build_table(offsets, data, np.arange(2, 2 + len(vocab), dtype=np.int32), capacity)[:2]

    def encode(self, rows, field, buckets, lk, uni, out):
        from dscore.kernel_args import NO_ROWS, KernelSpec, separator

        spec = tuple(KernelSpec.of(field)) if self.new else tuple(KernelSpec.of(field))[:6]
        counts = np.zeros(4, dtype=np.int64)
        args = (*rows, spec, separator(field), buckets, lk, uni, out, NO_ROWS, counts)
        if self.new:
            args += (np.full(1, -1, dtype=np.int64),)
        # CPU time of this thread: on a shared machine, wall time also counts other processes' turns
        t = time.thread_time()
        self.module.ENCODE_ROWS[spec[0]](*args)
        return time.thread_time() - t, int(counts[0])


def sweep(args) -> None:
    from dscore.kernel_args import row_buffers
    from dscore.kernels import cpu
    from dscore.kernels.unicode import tables

    impls = [Kernels(load_kernels(ref), ref) for ref in args.baseline or ()] + [Kernels(cpu, "this tree")]
    uni = tables()
    steps = {  # what each timed field does beyond the previous one
        "scan": (Field("f", max_len=1, on_invalid_utf8="replace"), 1 << 20),
        "+copy+hash": (Field("f", max_len=40), 1 << 20),
        "+lookup": (Field("f", max_len=40), 0),
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}; one thread; {args.tokens:,} tokens a case, median of {args.repeat}; "
        "ns per token of thread CPU time"
    )
    print(
        f"{'bytes':>5} {'tokens':<6} {'table':>9} {'kernels':<12}{'scan':>8}{'copy+hash':>11}{'lookup':>8}"
        f"{'ns/token':>10}{'M tokens/s':>12}"
    )
    rng = np.random.default_rng(1)
    for length in args.lengths:
        for mixed in (False, True):
            for size in args.tables:
                vocab = sweep_vocab(size, length, mixed)
                rows = row_buffers(sweep_column(rng, vocab, args.tokens, mixed))
                tables_ = [impl.table(vocab) for impl in impls]
                out = np.empty((len(rows[0]), 40), dtype=np.int32)
                times = {(i, s): [] for i in range(len(impls)) for s in steps}
                for r in range(args.repeat + 1):  # the first round compiles and warms caches
                    for i, impl in enumerate(impls):
                        for s, (field, buckets) in steps.items():
                            secs, n = impl.encode(rows, field, buckets, tables_[i], uni, out)
                            if r:
                                times[i, s].append(secs / n * 1e9)
                for i, impl in enumerate(impls):
                    scan, hashed, full = (float(np.median(times[i, s])) for s in steps)
                    print(
                        f"{length:>5} {'mixed' if mixed else 'ascii':<6} {size:>9,} {impl.label:<12}{scan:>8.1f}"
                        f"{hashed - scan:>11.1f}{full - hashed:>8.1f}{full:>10.1f}{1e3 / full:>12.1f}"
                    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--python-rows", type=int, default=50_000)
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--sweep", action="store_true", help="the kernel alone across token lengths, alphabets, tables")
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[5, 20, 40])
    ap.add_argument("--tables", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 200_000, 2_000_000])
    ap.add_argument("--tokens", type=int, default=1_000_000, help="tokens per sweep case")
    ap.add_argument(
        "--baseline",
        action="append",
        help="git revision whose CPU kernels to time beside this tree's (--sweep; may be given several times)",
    )
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child)
    if args.sweep:
        return sweep(args)

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        make_data(args.rows, d)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t:.1f}s")
        table = pq.read_table(os.path.join(d, "data.parquet"))
        vocab = Vocabulary.load(os.path.join(d, "vocab"))
        encode_table(table.slice(0, 10), [FIELD], vocab)  # warm: kernels compiled or loaded from cache

        secs_fresh, (arrays, stats) = timed(lambda: encode_table(table, [FIELD], vocab))
        buffers = {}
        secs, _ = timed(lambda: encode_table(table, [FIELD], vocab, buffers=buffers))
        s = stats["apps"]
        tokens = s.tokens
        print(
            f"tokens {tokens:,} ({tokens / args.rows:.1f}/row), kept {s.kept:,}, OOV {s.oov / s.kept:.2%}, "
            f"truncated rows {s.truncated / args.rows:.2%}"
        )

        vt = vocab["apps"].column("token").combine_chunks()
        vi = vocab["apps"].column("index").to_numpy()
        a_secs, a_out = timed(lambda: arrow_baseline(table.column("apps"), vt, vi), repeat=1)
        agree = (a_out == arrays["apps"]).all(axis=1).mean()

        n_py = min(args.python_rows, args.rows)
        values = table.column("apps").slice(0, n_py).to_pylist()
        mapping = dict(zip(vt.to_pylist(), vi.tolist()))
        p_secs, p_out = timed(lambda: python_baseline(values, mapping), repeat=1)
        assert (p_out == arrays["apps"][:n_py]).all(), "python baseline disagrees with dscore"
        p_rate = n_py / p_secs

        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", d], capture_output=True, text=True, check=True
        ).stdout.split()
        extra, out_bytes, in_bytes = (int(x) for x in out)

    d_rate = args.rows / secs
    a_rate = args.rows / a_secs
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, one thread"
    )
    print("dscore reuses output buffers across partitions in a worker; fresh arrays add a page fault per 4 KiB.")
    print(f"{'method':<44}{'rows/s':>12}{'M tokens/s':>12}{'vs dscore':>11}")
    for name, rate in [
        ("dscore encode, reused output buffers", d_rate),
        ("dscore encode, fresh output arrays", args.rows / secs_fresh),
        ("(a) pyarrow.compute split/lower + numpy", a_rate),
        (f"(b) plain Python loop ({n_py:,} rows)", p_rate),
    ]:
        print(f"{name:<44}{rate:>12,.0f}{rate * tokens / args.rows / 1e6:>12.1f}{d_rate / rate:>10.1f}x")
    print(f"\n(a) agrees with dscore on {agree:.2%} of rows (pyarrow's utf8_lower is not Python's str.lower)")
    print(
        f"peak extra memory of encode: {extra / 2**20:.0f} MiB; output arrays {out_bytes / 2**20:.0f} MiB, "
        f"input partition {in_bytes / 2**20:.0f} MiB; bound {(out_bytes + in_bytes) / 2**20:.0f} MiB "
        f"-> {'within' if extra <= out_bytes + in_bytes else 'OVER'}"
    )


if __name__ == "__main__":
    main()
