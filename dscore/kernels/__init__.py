"""Device code only: what runs inside the encode kernels, and their data.

``walk``: the token walk (split, strip, truncate, look up, pad), with ``text``
(UTF-8, strip, lower, keys) and ``table`` (XXH64, the lookup table), written once
as plain Python and compiled for each target by ``walk.compile_for``; ``cpu``: the
Numba CPU kernels (loops over rows); ``cuda``: the numba.cuda kernels (imported
only by GPU code paths); ``unicode``: the normalization tables the kernels read.
The host sides are ``dscore.kernel_args``, ``dscore.encoding`` and
``dscore.encoding_cuda``.
"""
