"""Compiled kernels. ``cpu``: Numba CPU kernels; ``cuda``: their numba.cuda twins
(imported only by GPU code paths); ``unicode``: the normalization tables."""
