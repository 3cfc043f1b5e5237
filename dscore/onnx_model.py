"""ONNX models: an ONNX Runtime session that ``dscore.model.Model`` calls like a torch module.

``model.path: model.onnx`` loads the file into an ``onnxruntime.InferenceSession``
(CPU execution provider; CUDA's where the worker's device is a GPU) wrapped in
``OnnxModule``, which takes torch tensors and returns one torch tensor, so that
batching, padding, the probe, output columns, fingerprints and the per-worker cache
are those of every other format. The module is named ``onnx_model`` so that it does
not shadow the ``onnx`` package.

Call convention, as for torch models: ``call: positional`` feeds one tensor per field,
in field order, to the graph's inputs in the graph's order; ``call: keyword`` feeds
each field to the graph input of its name. Each input gets the element type the graph
declares (an int64 export takes dscore's int64 tensors as they are, with no copy on
the CPU; an int32 one gets them cast). The graph must have one output, (B,) or (B, k).

Threads follow the worker layout: intra-op threads are torch's thread count in the
process (``dscore.model.set_threads`` sets it per worker, so that Dask threads x model
threads <= cores), inter-op threads 1.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelError

# ONNX Runtime's type names of the inputs dscore can feed, and their numpy types.
INPUT_TYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
}


def _import_ort(path: str):
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelError(
            f"model {path!r} is an ONNX model, and running it needs ONNX Runtime, which is not installed: "
            "pip install 'dscore[onnx]' (or onnxruntime-gpu for CUDA workers)"
        ) from e
    return onnxruntime


def _providers(ort, path: str, device: str, tf32: bool) -> list:
    if not str(device).startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelError(
            f"model {path!r} is to run on {device}, but this ONNX Runtime has no CUDA execution provider "
            f"(it has {', '.join(ort.get_available_providers())}): install onnxruntime-gpu instead of "
            "onnxruntime, or set model.device: cpu"
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    # ONNX Runtime's CUDA provider uses TF32 unless told not to; dscore's fp32 is IEEE fp32 (model.tf32).
    return [("CUDAExecutionProvider", {"device_id": index, "use_tf32": int(bool(tf32))}), "CPUExecutionProvider"]


class OnnxModule:
    """An ONNX Runtime session called like a torch module: ``module(*tensors)`` or
    ``module(**{input name: tensor})`` returns the graph's one output as a torch tensor.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    path : str
        The model file, for error messages.
    device : str
        ``cpu``, ``cuda`` or ``cuda:N``: where the inputs arrive and the session runs.

    Raises
    ------
    ModelError
        When the graph has more than one output or an input of a type dscore cannot
        feed (at construction), and when a call's inputs do not match the graph's.
    """

    def __init__(self, session, path: str, device: str = "cpu"):
        self.session = session
        self.path = path
        self.device = device
        inputs = session.get_inputs()
        self.input_names = [i.name for i in inputs]
        bad = [f"{i.name}: {i.type}" for i in inputs if i.type not in INPUT_TYPES]
        if bad:
            raise ModelError(
                f"model {path!r} has inputs of types dscore cannot feed ({', '.join(bad)}); expected "
                f"{', '.join(INPUT_TYPES)}"
            )
        self.input_types = [INPUT_TYPES[i.type] for i in inputs]
        outputs = session.get_outputs()
        if len(outputs) != 1:
            raise ModelError(
                f"model {path!r} has {len(outputs)} outputs ({', '.join(o.name for o in outputs)}); expected one, "
                "of shape (B,) or (B, k): export the model with its scores as a single output"
            )
        self.output_name = outputs[0].name

    @classmethod
    def load(cls, data: bytes, spec, device: str, threads: int | None = None) -> OnnxModule:
        """A session on the model file's bytes ``data`` for ``spec`` (a ``ModelSpec``) on ``device``.

        ``threads``: intra-op threads, default torch's thread count in this process
        (what ``set_threads`` chose for the worker).
        """
        ort = _import_ort(spec.path)
        if spec.precision != "fp32":
            raise ModelError(
                f"model.precision is {spec.precision!r}, but {spec.path!r} is an ONNX model, which runs in the "
                "precision it was exported in: export it in that precision and set model.precision: fp32"
            )
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: its warnings about graph rewrites are not the user's
        providers = _providers(ort, spec.path, device, spec.tf32)
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=providers)
        except Exception as e:
            if "external data" in str(e).lower():
                # Weights in files beside the graph would escape the model's fingerprint, and a
                # session made from bytes (the file may be on an object store) cannot find them.
                raise ModelError(
                    f"model {spec.path!r} keeps its weights in external data files; dscore needs them in the "
                    "one .onnx file: export with torch.onnx.export(..., external_data=False) (for models "
                    "under 2 GB), or onnx.save(onnx.load(path), path, save_as_external_data=False)"
                ) from e
            raise ModelError(
                f"cannot load model {spec.path!r} as an ONNX model: {type(e).__name__}: {e}. Is it an ONNX file "
                "(torch.onnx.export)? Other formats need another suffix: .pt (TorchScript) or .pt2 (torch.export)"
            ) from e
        if str(device).startswith("cuda") and session.get_providers()[0] != "CUDAExecutionProvider":
            raise ModelError(
                f"model {spec.path!r}: ONNX Runtime could not start its CUDA execution provider on {device} "
                "(see its log); check that onnxruntime-gpu suits the installed CUDA, or set model.device: cpu"
            )
        return cls(session, spec.path, device)

    def eval(self) -> OnnxModule:
        """A graph has no training mode; here so that the model loader treats every format alike."""
        return self

    def __repr__(self) -> str:
        return f"OnnxModule({self.path!r}, inputs={self.input_names}, device={self.device!r})"

    def _feeds(self, args: tuple, kwargs: dict) -> list:
        """(name, tensor, numpy type) per graph input, in the graph's order."""
        if kwargs:
            if set(kwargs) != set(self.input_names):
                raise ModelError(
                    f"model {self.path!r} takes the inputs {self.input_names} but model.call: keyword passes the "
                    f"fields {list(kwargs)}: name the fields after the graph's inputs (or the inputs after the "
                    "fields when exporting: torch.onnx.export(..., input_names=[...])), or use model.call: positional"
                )
            tensors = [kwargs[n] for n in self.input_names]
        else:
            if len(args) != len(self.input_names):
                raise ModelError(
                    f"model {self.path!r} takes {len(self.input_names)} inputs ({', '.join(self.input_names)}) "
                    f"but the job has {len(args)} fields, passed in field order (model.call: positional)"
                )
            tensors = list(args)
        return list(zip(self.input_names, tensors, self.input_types))

    def __call__(self, *args, **kwargs):
        import torch

        feeds = self._feeds(args, kwargs)
        if str(self.device).startswith("cuda"):
            return torch.from_numpy(self._run_cuda(feeds))
        # numpy() shares the tensor's memory; astype copies only where the graph declares another type.
        arrays = {n: t.detach().cpu().numpy().astype(dtype, copy=False) for n, t, dtype in feeds}
        (out,) = self.session.run([self.output_name], arrays)
        return torch.from_numpy(out)

    def _run_cuda(self, feeds: list) -> np.ndarray:
        """Inputs read in place from torch's GPU memory (IOBinding); the scores come back to the host."""
        import torch

        binding = self.session.io_binding()
        index = torch.device(self.device).index or 0
        keep = []  # the bound tensors must outlive the run
        for name, t, dtype in feeds:
            t = t.to(self.device, torch.from_numpy(np.empty(0, dtype)).dtype).contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", index, dtype, tuple(t.shape), t.data_ptr())
        binding.bind_output(self.output_name, "cpu")
        # The inputs were written on torch's stream of this thread; ONNX Runtime reads them on its own.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def export(module, path: str, fields, *, output: str = "score") -> str:
    """Export a torch module that takes dscore's inputs (one int64 (B, max_len) tensor
    per field, float32 (B, size) for a numeric one, in ``fields`` order) to ONNX at ``path``: inputs named after the fields,
    the batch dimension dynamic, the weights inside the one file (which dscore
    fingerprints). Puts ``module`` in eval mode. Needs ``onnx`` and ``onnxscript``
    (``dscore[onnx]``)."""
    import torch

    module.eval()
    example = tuple(
        torch.zeros((2, f.size)) if f.numeric else torch.ones((2, f.max_len), dtype=torch.int64) for f in fields
    )
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        module,
        example,
        path,
        input_names=[f.name for f in fields],
        output_names=[output],
        dynamic_shapes=tuple({0: batch} for _ in fields),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    return path
