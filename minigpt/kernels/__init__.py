"""Compiled (numba) kernels. Each agrees with a NumPy reference in minigpt.layers."""
