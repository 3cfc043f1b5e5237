"""Load a model file, place it on a device, and run it on encoded fields in micro-batches.

Formats: TorchScript; ``torch.export`` programs (``.pt2``); a factory
``"package.module:function"`` plus a state_dict loaded with ``weights_only=True``;
ONNX (``.onnx``, run by ONNX Runtime: ``dscore.onnx_model``).
A pickled ``nn.Module`` (``torch.save(model)``) can run arbitrary code when loaded
and is refused unless the job sets ``model.trust_model: true``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io as _io
import logging
import os
import threading
import zipfile

import numpy as np

from . import config, io
from .errors import ModelError
from .jagged import Jagged
from .spec import ModelSpec

log = logging.getLogger(__name__)

PROBE_INDEX = 1  # the OOV index: valid for every embedding table, unlike arbitrary ids
PAD_ROWS = 64


def fingerprint(url: str, storage_options: dict | None = None) -> str:
    """Content fingerprint of a model file: ``sha256:<hex>`` locally, the etag or
    size and modification time on object stores (where reading the whole file
    just to name it would cost a download)."""
    fs, path = io.url_to_fs(url, storage_options)
    fs.invalidate_cache(path)  # a cached listing would give the etag of a file since replaced
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise ModelError(f"model file {url!r} does not exist") from None
    if io.is_local(fs):
        return "sha256:" + _sha256_file(path, info.get("size"), info.get("mtime"))
    return f"{fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol}:{info.get('size')}:{io._version(info)}"


_SHA_CACHE: dict = {}


def _sha256_file(path: str, size, mtime) -> str:
    key = (path, size, mtime)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"model.device is {device!r} but torch sees no CUDA device; use device: auto or cpu")
    return device


def _read_bytes(url: str, storage_options: dict | None) -> bytes:
    fs, path = io.url_to_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ModelError(f"model file {url!r} does not exist") from None


def _detect_format(spec: ModelSpec, data: bytes) -> str:
    if spec.format != "auto":
        return spec.format
    if spec.factory:
        return "state_dict"
    if spec.path.endswith(".pt2"):
        return "export"
    if spec.path.lower().endswith(".onnx"):
        return "onnx"
    try:
        names = zipfile.ZipFile(_io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return "pickle"  # legacy torch.save format
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/serialized_exported_program.json") or "/models/" in n for n in names):
        return "export"
    return "pickle"


def _factory(spec: ModelSpec):
    target = spec.factory
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"model.factory {target!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"model.factory {target!r} cannot be imported: {e}") from e
    return fn(**spec.factory_kwargs)


def load_module(spec: ModelSpec, device: str, storage_options: dict | None = None, expect: str | None = None):
    """The ``torch.nn.Module`` (or ScriptModule; for ``.onnx``, an ``OnnxModule`` called
    the same way) that ``spec`` describes, on ``device``, in eval mode.

    ``expect`` is the fingerprint the job recorded; a local file that no longer
    matches it is an error rather than a silent mix of two models.
    """
    import torch

    data = _read_bytes(spec.path, storage_options)
    if expect and expect.startswith("sha256:") and "sha256:" + hashlib.sha256(data).hexdigest() != expect:
        raise ModelError(f"model file {spec.path!r} changed while the job was running")
    fmt = _detect_format(spec, data)
    buf = _io.BytesIO(data)
    try:
        if fmt == "torchscript":
            module = torch.jit.load(buf, map_location=device)
        elif fmt == "export":
            module = torch.export.load(buf).module().to(device)
        elif fmt == "onnx":
            from .onnx_model import OnnxModule

            if spec.inputs == "jagged":
                raise ModelError(
                    f"model.inputs: jagged is not supported for ONNX models ({spec.path!r}); use a TorchScript, "
                    "torch.export or state_dict model for jagged inputs, or export the ONNX model for padded inputs"
                )

            module = OnnxModule.load(data, spec, device)
        elif fmt == "state_dict":
            if not spec.factory:
                raise ModelError(f"{spec.path}: a state_dict needs model.factory: 'package.module:function'")
            module = _factory(spec)
            state = torch.load(buf, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ModelError(
                    f"{spec.path}: expected a state_dict (a mapping of tensors), got {type(state).__name__}"
                )
            module.load_state_dict(state)
            module = module.to(device)
        else:  # a pickled nn.Module
            if not spec.trust_model:
                raise ModelError(
                    f"{spec.path} is a pickled model (torch.save(model)), and loading a pickle can run "
                    "arbitrary code. Export TorchScript (torch.jit.script) or a torch.export program (.pt2), "
                    "or save a state_dict and set model.factory; or set model.trust_model: true if you trust this file"
                )
            module = torch.load(buf, map_location=device, weights_only=False)
            if not isinstance(module, torch.nn.Module):
                raise ModelError(f"{spec.path}: the pickle holds a {type(module).__name__}, not a torch.nn.Module")
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"cannot load model {spec.path!r} as {fmt}: {type(e).__name__}: {e}") from e
    if fmt != "export":  # an exported program is traced in its mode already (and refuses eval())
        module.eval()
    return module


def as_tensor(a, device: str):
    """A field's int32 matrix as a torch tensor for a model on ``device``.

    numpy: a zero-copy CPU tensor (``predict`` moves micro-batches to the device).
    A CUDA array (a numba device array from GPU encoding, or anything with
    ``__cuda_array_interface__``): a zero-copy tensor on its GPU for a CUDA model;
    for a CPU model, copied to the host first (``copy_to_host``, which numba's
    simulator has too). GPU encoding synchronises its stream before it returns, so
    the values are complete when torch reads them on its own stream.
    """
    import torch

    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    if str(device).startswith("cuda"):
        if a.size == 0:  # an empty device array may export a null pointer: nothing to share
            return torch.empty(tuple(a.shape), dtype=torch.from_numpy(np.empty(0, a.dtype)).dtype, device=device)
        return torch.as_tensor(a, device=device)
    if hasattr(a, "copy_to_host"):
        return torch.from_numpy(a.copy_to_host())
    return torch.as_tensor(a, device="cuda").to(device)


class Model:
    """A loaded model bound to the job's fields: ``predict(arrays) -> float32 (rows, k)``.

    Parameters
    ----------
    module : callable
        The torch module.
    fields : sequence of Field
        Input order (positional call) or keyword names (keyword call), and the
        probe batch's shapes.
    spec : ModelSpec
    device : str
        A resolved device (``cpu``, ``cuda``, ``cuda:N``).
    """

    def __init__(self, module, fields, spec: ModelSpec, device: str):
        self.module = module
        self.field_names = [f.name for f in fields]
        self.max_lens = {f.name: f.width for f in fields}  # a numeric field's width is its size
        self.numeric = {f.name for f in fields if f.numeric}
        self.spec = spec
        # model.inputs: jagged: each categorical field is two tensors, values and offsets
        self.jagged = spec.inputs == "jagged"
        self.input_names = [
            m for n in self.field_names for m in ((n,) if self._dense(n) else (f"{n}_values", f"{n}_offsets"))
        ]
        self.device = device
        # Until dscore.optimize.prepare tunes it on real rows ("auto").
        self.batch_size = spec.batch_size if isinstance(spec.batch_size, int) else config.get("tune.default-batch")
        self.output_names: list[str] | None = list(spec.outputs) if spec.outputs else None
        self.runner = None  # an optimized module (see dscore.optimize), else the module itself
        self.mode = "none"
        self.pad = False  # pad the last micro-batch to batch_size (static shapes)
        self.prepared = False

    def use(self, runner, mode: str, pad: bool = False) -> None:
        """Run ``runner`` (an optimized module, or None for the plain one) from now on."""
        self.runner, self.mode, self.pad = runner, mode, pad

    @classmethod
    def load(cls, spec: ModelSpec, fields, *, device: str | None = None, storage_options=None, expect=None):
        device = resolve_device(device or spec.device)
        if device.startswith("cuda"):  # in the worker: the client probes on the CPU
            set_tf32(spec.tf32)
        model = cls(load_module(spec, device, storage_options, expect), fields, spec, device)
        model.probe()
        return model

    def _call(self, tensors):
        module = self.runner if self.runner is not None else self.module
        if self.spec.call == "keyword":
            return module(**dict(zip(self.input_names, tensors)))
        return module(*tensors)

    def _dense(self, name: str) -> bool:
        """Whether field ``name`` is one tensor (padded, or numeric) rather than a jagged pair."""
        return not self.jagged or name in self.numeric

    def probe(self, largest: dict | None = None) -> None:
        """Run one row of OOV tokens; fix the output columns or raise ``ModelError``.

        With ``largest`` (field name -> the largest index the encoding can produce)
        a second row holds those indices, so that a mapping table bigger than the
        model's embedding fails here, named, rather than mid-job.
        """
        arrays = {n: self._probe_row(n, PROBE_INDEX) for n in self.field_names}
        try:
            out = self._forward(arrays)
        except ModelError:
            raise
        except Exception as e:
            how = (
                f"model(**{{{', '.join(self.input_names)}}})"
                if self.spec.call == "keyword"
                else f"model({', '.join(self.input_names)})"
            )
            shapes = (
                "model.inputs: jagged: int64 values (max_len,) and offsets (1,) per categorical field"
                if self.jagged
                else "int64 tensors of shape (1, max_len)"
            )
            raise ModelError(
                f"model {self.spec.path!r} fails on a one-row probe batch called as {how} "
                f"({shapes}, float32 (1, size) for numeric fields): "
                f"{type(e).__name__}: {e}. Check the fields' order, their max_len and size, model.call "
                "(positional or keyword) and model.inputs (padded: one (B, max_len) tensor per field; jagged: "
                "values and offsets per field, as nn.EmbeddingBag takes them)"
            ) from e
        if largest:
            top = {n: self._probe_row(n, largest.get(n, PROBE_INDEX)) for n in self.field_names}
            try:
                self._forward(top)
            except Exception as e:
                raise ModelError(
                    f"model {self.spec.path!r} fails on the largest indices the mapping tables produce "
                    f"({', '.join(f'{n}: {i}' for n, i in largest.items())}): {type(e).__name__}: "
                    f"{str(e).splitlines()[-1] if str(e) else ''}. Are the tables bigger than the model's "
                    "embeddings (tables from another training run)?"
                ) from e
        k = out.shape[1]
        if self.output_names is None:
            self.output_names = ["score"] if k == 1 else [f"score_{i}" for i in range(k)]
        elif len(self.output_names) != k:
            raise ModelError(
                f"model {self.spec.path!r} returns {k} scores per row but model.outputs names "
                f"{len(self.output_names)}: {self.output_names}"
            )

    def _probe_row(self, name: str, index: int):
        """One probe row of field ``name``: ``index`` everywhere (``max_len`` of them when
        jagged), or float32 zeros if numeric."""
        if name in self.numeric:
            return np.zeros((1, self.max_lens[name]), dtype=np.float32)
        if self.jagged:
            width = self.max_lens[name]
            return Jagged(np.full(width, index, dtype=np.int32), np.array([0, width], dtype=np.int64))
        return np.full((1, self.max_lens[name]), index, dtype=np.int32)

    def _dtypes(self):
        """Per field in order, the dtype the model gets: int64 indices (values and offsets
        of a jagged field), float32 numbers."""
        import torch

        return [torch.float32 if n in self.numeric else torch.int64 for n in self.field_names]

    def _autocast(self):
        import torch

        if self.spec.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.spec.precision == "bf16" else torch.float16
        return torch.autocast(device_type=str(self.device).split(":")[0], dtype=dtype)

    def _tensor(self, a):
        return as_tensor(a, self.device)

    def _forward_tensors(self, tensors, rows: int):
        """The model on its tensors (on ``self.device``) for ``rows`` rows: float32 scores
        (rows, k) there."""
        import torch

        with torch.inference_mode(), self._autocast():
            y = self._call(tensors)
        if not isinstance(y, torch.Tensor):
            raise ModelError(f"model {self.spec.path!r} returned {type(y).__name__}; expected one tensor")
        if y.dim() == 1:
            y = y.unsqueeze(1)
        if y.dim() != 2 or y.shape[0] != rows:
            raise ModelError(
                f"model {self.spec.path!r} returned shape {tuple(y.shape)} for {rows} rows; expected ({rows},) or ({rows}, k)"
            )
        return y.float()

    def _forward(self, arrays: dict) -> np.ndarray:
        inputs = [self._input(arrays[n]) for n in self.field_names]
        rows = len(arrays[self.field_names[0]])
        return self._forward_tensors(self._batch(inputs, 0, rows, rows), rows).cpu().numpy()

    def _input(self, a):
        """A field's array as ``predict`` slices it: a tensor, or a jagged field's pair
        ``(values tensor, host offsets)``."""
        if isinstance(a, Jagged):
            return self._tensor(a.values), a.offsets
        return self._tensor(a)

    def _batch(self, inputs: list, start: int, stop: int, size: int) -> list:
        """Rows ``start:stop`` of every field as the model's tensors on its device, padded
        to ``size`` rows with PROBE_INDEX rows (one OOV token each for a jagged field)."""
        import torch

        n, out = stop - start, []
        for t, d in zip(inputs, self._dtypes()):
            if not isinstance(t, tuple):
                b = t[start:stop].to(self.device, d, non_blocking=True)
                if size > n:
                    b = torch.cat([b, b.new_full((size - n, b.shape[1]), PROBE_INDEX)])
                out.append(b)
                continue
            values, offsets = t
            lo, hi = int(offsets[start]), int(offsets[stop])
            v = values[lo:hi].to(self.device, d, non_blocking=True)
            o = torch.from_numpy(offsets[start:stop] - lo)
            if size > n:
                v = torch.cat([v, v.new_full((size - n,), PROBE_INDEX)])
                o = torch.cat([o, torch.arange(hi - lo, hi - lo + size - n, dtype=o.dtype)])
            out += [v, o.to(self.device, d, non_blocking=True)]
        return out

    def predict(self, arrays: dict, batch_size: int | None = None) -> np.ndarray:
        """Scores for every row of ``arrays`` (field name -> int32 (rows, max_len), numpy or
        CUDA, or a ``Jagged`` with ``model.inputs: jagged``; float32 (rows, size) for a
        numeric field), as float32 (rows, k) numpy. On a GPU, micro-batches are queued on this
        thread's CUDA stream without a synchronisation: the one copy of the scores to
        the host at the end waits for them."""
        import torch

        on_gpu = str(self.device).startswith("cuda")
        with torch.cuda.stream(thread_stream(self.device)) if on_gpu else contextlib.nullcontext():
            inputs = [self._input(arrays[n]) for n in self.field_names]
            rows = len(arrays[self.field_names[0]])
            bs = batch_size or self.batch_size
            out = None
            for start in range(0, rows, bs):
                stop = min(rows, start + bs)
                n = stop - start
                # A compiled model has one static shape: pad to bs. Otherwise pad a short
                # last batch to a multiple of PAD_ROWS: CPU GEMM kernels differ in the last
                # ulp between a row block and its remainder, and with every batch a whole
                # number of blocks a row's score does not depend on the batch size (tested).
                size = bs if self.pad else -(-n // PAD_ROWS) * PAD_ROWS
                y = self._forward_tensors(self._batch(inputs, start, stop, size), size)[:n]
                if out is None:
                    out = torch.empty((rows, y.shape[1]), dtype=torch.float32, device=y.device)
                out[start:stop] = y
            if out is None:
                return np.empty((0, len(self.output_names or ["score"])), dtype=np.float32)
            return out.cpu().numpy()


_STREAMS = threading.local()


def thread_stream(device):
    """This thread's CUDA stream on ``device``.

    A GPU worker runs two Dask threads (``GPU_THREADS_PER_WORKER``): while one reads
    and decodes its next partition on the host, the other's encode kernels and
    micro-batches run on the GPU; with a stream per thread, neither queues behind the
    other's work. (GPU encoding uses its own per-thread stream and synchronises it
    before predict starts.)
    """
    import torch

    streams = _STREAMS.__dict__.setdefault("by_device", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device=device)
    return streams[device]


def set_tf32(enabled: bool) -> None:
    """Let float32 matrix products (cuBLAS) and convolutions (cuDNN) use TensorFloat-32.

    Process-wide torch flags, set where a model is placed on CUDA (``model.tf32``).
    Off sets cuDNN's flag off too (torch's default has it on), so that fp32 means
    IEEE fp32 everywhere. The legacy ``allow_tf32`` flags, not torch 2.9's
    ``fp32_precision``: the legacy setters keep both views consistent, while reading
    a legacy flag after the new setters raises in torch 2.9+.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def set_threads(torch_threads: int, interop_threads: int = 1) -> None:
    """Set torch's and numba's thread pools of this process.

    Needed in every worker process: Dask's nanny sets OMP_NUM_THREADS=1 when it
    spawns a worker, and torch's settings in a parent do not reach spawned children.
    """
    import numba
    import torch

    torch.set_num_threads(torch_threads)
    try:  # may only be set once, before any inter-op work in the process
        torch.set_num_interop_threads(interop_threads)
    except RuntimeError:
        pass
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
    os.environ["DSCORE_TORCH_THREADS"] = str(torch_threads)
