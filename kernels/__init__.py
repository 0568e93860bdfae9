"""Fused Triton kernels for HRM, installed as ``hrm_fast.kernels``.

One file per kernel family (Triton kernels, host launchers, torch.library registration,
and the eager ``*_ref`` reference that defines the numerics). Importing this package never
touches a GPU: CUDA tensors go to Triton, CPU tensors go to the reference.
"""
