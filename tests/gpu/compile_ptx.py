"""Compile every CUDA kernel to PTX for sm_80, without a GPU (needs libNVVM only).

The simulator runs the kernels as Python, so it cannot see a type error of the
CUDA target; this does. Run as a script (tests/test_cuda_kernels.py does):
prints one line per kernel variant, or "SKIP: ..." when libNVVM is not found.
"""

import re
import sys

import numba.cuda.dispatcher
from numba import cuda
from numba import types as T
from numba.cuda.cudadrv import nvvm

CC = (8, 0)


class _Device:
    compute_capability = CC


def main() -> int:
    if not nvvm.is_available():
        print("SKIP: libNVVM not found (install the CUDA toolkit or set CUDA_HOME)")
        return 0
    # numba's built-in target asks the current device for the compute capability of
    # device functions; there is none here, so answer for it.
    numba.cuda.dispatcher.get_current_device = lambda: _Device()
    from dscore.kernels import cuda as kc

    def arr(dtype, ndim=1):
        return T.Array(dtype, ndim, "C")

    u8, i32, i64 = T.uint8, T.int32, T.int64
    variants = [(kind, i32, i32) for kind in sorted(kc.ENCODE_ROWS)]
    variants += [(kc.DELIMITED, i64, i64), (kc.LIST, i64, i32), (kc.LIST, i32, i64)]
    for kind, rows, offsets in variants:
        sig = (
            arr(rows), arr(rows), arr(u8), i64, arr(offsets), arr(u8), arr(u8), i64,
            i64, i64, i64, i64, i64, i64, arr(u8), i64,
            arr(T.uint64, 2), arr(u8), arr(i32), arr(i32), arr(i32), arr(u8),
            arr(u8), arr(i64), arr(i32, 2), arr(i64), arr(i64),
        )  # fmt: skip
        check(f"encode_rows kind={kind} rows={rows} offsets={offsets}", kc.ENCODE_ROWS[kind], sig)
    for codes in (T.int8, T.uint16, i32, i64):
        sig = (arr(codes), arr(u8), i64, arr(i32, 2), arr(i64), arr(i32, 2), arr(i64))
        check(f"gather_rows codes={codes}", kc.gather_rows, sig)
    check("row_kept", kc.row_kept, (arr(i32, 2), arr(i64)))
    check("compact_rows", kc.compact_rows, (arr(i32, 2), arr(i64), arr(i32)))
    return 0


def check(name, kernel, sig):
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=CC)
    # Integer-only kernels: a float op means a signed/unsigned mix was promoted to float64.
    floats = re.findall(r"\.f(?:16|32|64)\b", ptx)
    assert not floats, f"{name}: float instructions in integer code ({len(floats)})"
    print(f"{name}: {len(ptx)} bytes of PTX")


if __name__ == "__main__":
    sys.exit(main())
