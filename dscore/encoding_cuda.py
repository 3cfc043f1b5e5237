"""The host side of encoding on the GPU: device checks, launches, uploads and buffers.

``dscore.encoding.encode_table(..., device="cuda")`` runs the same per-field loop
as on the CPU with this module as its device: ``output`` and ``empty`` give device
memory, ``encode_rows`` and ``gather_rows`` take the CPU kernels' numpy arguments
(``dscore.kernel_args``), upload them and launch ``dscore.kernels.cuda``. Results
stay on the GPU as numba device arrays (hand them to torch through
``__cuda_array_interface__``), with exactly the CPU path's values and counts.

Mapping tables and the Unicode tables are uploaded once per process and GPU
(``device_tables``, keyed by the host arrays, which ``Vocabulary`` and
``unicode.tables()`` cache); each call uploads only its partition's Arrow buffers,
packed into one transfer. The launch geometry is ``dscore.cuda.threads-per-block``
and ``dscore.cuda.max-blocks`` (``dscore.config``), read at each launch.

This module imports numba.cuda, which needs no GPU: on a machine without one the
entry points raise ``RuntimeError`` saying why. Under ``NUMBA_ENABLE_CUDASIM=1``
everything runs on numba's simulator, which is how the tests check the kernels
on machines without a GPU (``tests/gpu``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict

import numba
import numpy as np
from numba import cuda

from . import config
from .errors import JobError, SpecError
from .jagged import jagged_buffers
from .kernel_args import NO_ROWS, KernelSpec
from .kernels import cuda as kc
from .kernels.walk import LIST
from .spec import Field


def cuda_available() -> bool:
    """True when numba.cuda can run kernels: a CUDA GPU and driver, or the simulator."""
    return bool(cuda.is_available())


def unavailable_reason() -> str:
    """Why numba.cuda cannot run kernels here, in one line (for error and log messages)."""
    reason = cuda.cuda_error()
    if reason is None:
        from numba.cuda.cudadrv import nvvm

        reason = "no CUDA GPU is visible to this process" if nvvm.is_available() else "libNVVM is not installed"
    return " ".join(str(reason).split())


def require_device() -> None:
    """Raise ``JobError`` saying why when numba.cuda cannot run kernels here."""
    if cuda.is_available():
        return
    raise JobError(
        f"encoding on the GPU needs a CUDA device, and numba.cuda found none ({unavailable_reason()}). "
        "Install the NVIDIA driver (and numba-cuda) where the workers run, or set encode_device: cpu"
    )


# Numba's simulator runs one kernel at a time in a process ("concurrent simulated kernel
# not supported"), and a GPU worker's two threads both encode: under it they take turns.
_SIMULATOR_TURN = threading.Lock() if numba.config.ENABLE_CUDASIM else contextlib.nullcontext()


@contextlib.contextmanager
def on(device: str):
    """The numba context for ``device``, checked: ``"cuda"`` is whatever is current on this
    thread (torch's current device, as for a model on ``"cuda"``; else GPU 0), ``"cuda:N"`` GPU N."""
    require_device()  # the clear error, before numba's own for cuda.gpus
    _, _, n = str(device).partition(":")
    with _SIMULATOR_TURN, cuda.gpus[int(n)] if n else contextlib.nullcontext():
        yield


def _setting(key: str, lo: int, hi: int) -> int:
    value = config.get(key)
    try:
        ok = lo <= int(value) <= hi and float(value) == int(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        env = "DASK_DSCORE__" + key.upper().replace(".", "__").replace("-", "_")
        raise SpecError(
            f"dscore.{key} is {value!r}; expected an integer from {lo} to {hi}: fix it where it is set "
            f"(dask config, --set or {env}), or unset it for the default"
        )
    return int(value)


def launch_geometry() -> tuple[int, int]:
    """``(threads per block, most blocks)`` from ``dscore.cuda.*``. The tests make both
    small (under the simulator) so that rows fall on block edges and threads loop
    over several rows."""
    return _setting("cuda.threads-per-block", 1, 1024), _setting("cuda.max-blocks", 1, 2**31 - 1)


# Lookup and Unicode tables are uploaded once per GPU and reused by every call.
# Keys are the host arrays' ids; an entry holds the host arrays themselves, so no
# id can be reused by a new array while its entry lives.
_TABLES: OrderedDict = OrderedDict()
_TABLES_LOCK = threading.Lock()
_TABLES_KEPT = 32


def device_tables(arrays: tuple) -> tuple:
    """Device copies of ``arrays`` (a lookup ``(slots, arena)`` or the Unicode tables).

    Uploaded on the first call for these host arrays and this GPU, then served from a
    small LRU cache. The host arrays must not change afterwards (vocabulary lookups
    and ``unicode.tables()`` are read-only).
    """
    require_device()
    key = (cuda.current_context().device.uuid, *(id(a) for a in arrays))
    with _TABLES_LOCK:
        hit = _TABLES.get(key)
        if hit is not None:
            _TABLES.move_to_end(key)
            return hit[1]
    dev = tuple(cuda.to_device(np.ascontiguousarray(a)) for a in arrays)
    with _TABLES_LOCK:
        _TABLES[key] = (arrays, dev)
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    return dev


class _Workspace:
    """Per host thread: a stream and grow-only buffers reused across calls.

    Pinned host memory and device memory are slow to allocate (and allocation
    synchronizes the device), so one partition after another reuses them. Every
    call ends by synchronizing its stream, so no copy or kernel still uses them then.
    """

    def __init__(self):
        self.stream = cuda.stream()
        self.counts = cuda.pinned_array(5, np.int64)
        self.staging = None  # pinned host bytes: the inputs, packed
        self.inputs = None  # device bytes: the same, after one copy
        self.scratch = None  # device bytes: the encode kernel's keys
        self.matrix = None  # device int32: jagged rows before compaction

    def upload(self, arrays):
        """Device views of the 1-D host ``arrays``, packed and copied in one transfer."""
        ends, pos = [], 0
        for a in arrays:
            pos = -(-pos // 8) * 8  # each view 8-byte aligned
            ends.append((pos, pos + a.nbytes))
            pos += a.nbytes
        total = max(pos, 8)
        if self.staging is None or self.staging.shape[0] < total:
            self.staging = cuda.pinned_array(total + total // 4, np.uint8)
            self.inputs = cuda.device_array(total + total // 4, np.uint8)
        for a, (lo, hi) in zip(arrays, ends):
            self.staging[lo:hi] = np.ascontiguousarray(a).view(np.uint8)
        self.inputs[:total].copy_to_device(self.staging[:total], stream=self.stream)
        return [self.inputs[lo:hi].view(a.dtype) for a, (lo, hi) in zip(arrays, ends)]

    def padded(self, rows, width):
        """Device int32 scratch of ``(rows, width)``: jagged rows are encoded padded here, then compacted."""
        if self.matrix is None or self.matrix.size < rows * width:
            self.matrix = cuda.device_array(max(rows * width + rows * width // 4, 1), np.int32)
        return self.matrix[: rows * width].reshape((rows, width))

    def keys(self, nbytes):
        if self.scratch is None or self.scratch.shape[0] < nbytes:
            self.scratch = cuda.device_array(max(nbytes + nbytes // 4, 8), np.uint8)
        return self.scratch

    def launch(self, kernel, n, *args):
        if n > 0:  # a grid of 0 blocks is an error
            threads, most = launch_geometry()
            kernel[min(-(-n // threads), most), threads, self.stream](*args)

    def finish(self, counts):
        host = self.counts[: counts.shape[0]]
        counts.copy_to_host(host, stream=self.stream)
        self.stream.synchronize()
        return host.copy()


# One workspace per host thread, in a plain dict rather than a threading.local, so
# that clear() (called at worker teardown, on another thread than the tasks ran on)
# can drop every thread's buffers.
_WORKSPACES: dict[int, _Workspace] = {}


def _workspace() -> _Workspace:
    require_device()
    ws = _WORKSPACES.get(threading.get_ident())
    if ws is None:
        ws = _WORKSPACES.setdefault(threading.get_ident(), _Workspace())
    return ws


def _key_offsets(kind, starts, stops, offsets):
    """Row ``i``'s keys fit in ``[key_off[i], key_off[i + 1])``: three times its bytes plus 8,
    as ``walk.scratch_size`` allows for the CPU's longest row (``key_unicode``'s bound)."""
    starts = starts.astype(np.int64)
    stops = stops.astype(np.int64)
    if kind == LIST:  # the row's child strings; indices of empty rows may point anywhere
        last = offsets.shape[0] - 1
        spans = offsets[np.minimum(stops, last)].astype(np.int64) - offsets[np.minimum(starts, last)]
        nbytes = np.where(stops > starts, spans, 0)
    else:
        nbytes = np.maximum(stops - starts, 0)
    key_off = np.zeros(starts.shape[0] + 1, dtype=np.int64)
    np.cumsum(3 * nbytes + 8, out=key_off[1:])
    return key_off


def _checked(out, shape):
    if tuple(out.shape) != shape or out.dtype != np.int32:
        raise ValueError(f"out must be an int32 device array of shape {shape}; got {out.dtype} {tuple(out.shape)}")
    return out


def output(buffers, field: Field, rows: int):
    """Device memory for a field's ``(rows, max_len)`` result: a reused buffer's first
    ``rows`` rows (``buffers``, kept by the caller), or a new array."""
    if buffers is None:
        return cuda.device_array((rows, field.max_len), dtype=np.int32)
    buf = buffers.get(field.name)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != field.max_len:
        buf = buffers[field.name] = cuda.device_array((max(rows, 1), field.max_len), dtype=np.int32)
    return buf[:rows]


def empty(shape, dtype):
    """A new device array."""
    return cuda.device_array(shape, dtype=dtype)


def jagged_output(buffers, field: Field, rows: int) -> tuple:
    """``(values, offsets)`` for a field's jagged rows: device int32 values with room
    for ``rows * max_len``, host int64 offsets (see ``jagged.jagged_buffers``)."""
    return jagged_buffers(buffers, field, rows, lambda n: cuda.device_array(n, dtype=np.int32))


def encode_rows_jagged(rows, spec: KernelSpec, sep, buckets, lk, uni, values, offsets, counts, bad) -> None:
    """``cpu.ENCODE_ROWS_JAGGED`` on the GPU: the rows encoded padded (right) into scratch
    device memory, then compacted into the device ``values`` from ``offsets[0]`` on;
    ``offsets`` (host, ``rows + 1``) receives the rest of the rows' offsets."""
    scratch = _workspace().padded(offsets.shape[0] - 1, spec.max_len)
    encode_rows(rows, spec._replace(pad_left=0), sep, buckets, lk, uni, scratch, NO_ROWS, counts, bad)
    if bad[0] < 0:
        _compact(scratch, values, offsets)


def gather_rows_jagged(codes, valid, valid_off, dict_out, dict_tokens, values, offsets, counts) -> None:
    """``cpu.gather_rows_jagged`` on the GPU: ``gather_rows`` into scratch, then compacted
    as ``encode_rows_jagged`` does (``dict_out``'s rows are right-padded)."""
    scratch = _workspace().padded(codes.shape[0], dict_out.shape[1])
    gather_rows(codes, valid, valid_off, dict_out, dict_tokens, scratch, counts)
    _compact(scratch, values, offsets)


def _compact(scratch, values, offsets) -> None:
    """The right-padded rows of the device matrix ``scratch`` into ``values`` from
    ``offsets[0]`` on, their offsets into the host ``offsets[1:]``: counts on the
    device, offsets on the host (one copy each way), rows copied on the device."""
    ws = _workspace()
    n = scratch.shape[0]
    kept = cuda.device_array(max(n, 1), np.int64, stream=ws.stream)
    ws.launch(kc.row_kept, n, scratch, kept)
    host = kept[:n].copy_to_host(stream=ws.stream)
    ws.stream.synchronize()
    np.cumsum(host, out=offsets[1:])
    offsets[1:] += offsets[0]
    (d_offsets,) = ws.upload([offsets])
    ws.launch(kc.compact_rows, n, scratch, d_offsets, values)
    ws.stream.synchronize()


def encode_rows(rows, spec: KernelSpec, sep, buckets, lk, uni, out, row_tokens, counts, bad) -> None:
    """``cpu.ENCODE_ROWS[spec.kind](*rows, tuple(spec), ...)`` on the GPU.

    ``rows`` and ``sep``, ``lk``, ``uni`` are host numpy arrays, as for the CPU
    kernel; ``out`` an int32 ``(rows, max_len)`` device array (e.g. a slice of a
    whole partition's output; wrap a torch tensor with ``numba.cuda.as_cuda_array``);
    ``row_tokens`` an int64 device array that receives each row's token count, or
    empty. The rows' ``[tokens, kept, oov, truncated_rows]`` are added to the host
    ``counts``; ``bad[0]`` receives the first row holding invalid UTF-8 when
    ``spec`` does not replace it. Raises ``RuntimeError`` when no CUDA device is usable.
    """
    ws = _workspace()
    starts, stops, row_valid, row_valid_off, offsets, data, valid, valid_off = rows
    n = starts.shape[0]
    out = _checked(out, (n, spec.max_len))
    key_off = _key_offsets(spec.kind, starts, stops, offsets)
    end = int(offsets[-1]) if offsets.shape[0] else 0
    # data may be a whole shared buffer of which offsets use a prefix (sliced arrays)
    d_starts, d_stops, d_row_valid, d_offsets, d_data, d_valid, d_sep, d_key_off, d_counts = ws.upload(
        [starts, stops, row_valid, offsets, data[:end], valid, sep, key_off, np.array([0, 0, 0, 0, n], np.int64)]
    )
    if isinstance(row_tokens, np.ndarray):  # the host's NO_ROWS: no counts wanted
        row_tokens = cuda.device_array(0, np.int64)  # empty: no allocation
    ws.launch(
        kc.ENCODE_ROWS[spec.kind], n,
        d_starts, d_stops, d_row_valid, int(row_valid_off), d_offsets, d_data, d_valid, int(valid_off),
        spec.max_len, spec.tail, spec.pad_left, spec.lower, spec.strip, spec.replace, d_sep, int(buckets),
        *device_tables(lk), *device_tables(uni),
        ws.keys(int(key_off[-1])), d_key_off, out, row_tokens, d_counts,
    )  # fmt: skip
    got = ws.finish(d_counts)
    counts += got[:4]
    if got[4] < n:
        bad[0] = got[4]


def gather_rows(codes, valid, valid_off, dict_out, dict_tokens, out, counts) -> None:
    """``cpu.gather_rows`` on the GPU: ``out[i] = dict_out[codes[i]]``, counts added to ``counts``.

    ``codes``, ``valid`` are host numpy arrays (a dictionary column's indices and
    validity); ``dict_out``, ``dict_tokens`` and ``out`` device arrays, the first
    two as ``encode_rows`` left them for the dictionary's entries.
    """
    ws = _workspace()
    n = codes.shape[0]
    out = _checked(out, (n, dict_out.shape[1]))
    d_codes, d_valid, d_counts = ws.upload([codes, valid, np.zeros(4, np.int64)])
    ws.launch(kc.gather_rows, n, d_codes, d_valid, int(valid_off), dict_out, dict_tokens, out, d_counts)
    counts += ws.finish(d_counts)


def clear() -> None:
    """Drop the cached device tables and every thread's buffers and stream (e.g. at
    worker teardown); a call in flight keeps its own until it returns."""
    with _TABLES_LOCK:
        _TABLES.clear()
    _WORKSPACES.clear()
    if cuda.is_available():
        # numba frees device memory in batches; hand what was just dropped back now
        try:
            cuda.current_context().deallocations.clear()
        except AttributeError:  # the simulator keeps no such list
            pass
