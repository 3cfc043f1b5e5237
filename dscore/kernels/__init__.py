"""Compiled kernels. ``cpu``: Numba CPU kernels; ``unicode``: the normalization tables."""
