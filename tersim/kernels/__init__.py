"""Integer kernels of the simulator (Numba); tersim.kernels.reference_torch has the same API in torch ops.

Every function takes and returns numpy arrays (outputs int32) and follows docs/ARCHITECTURE.md's
numerics contract bit for bit.
"""
from tersim.kernels.arith import round_shift
from tersim.kernels.conv import conv2d_int, linear_int
from tersim.kernels.elementwise import add_int, requantize_int
from tersim.kernels.pool import adaptive_avg_pool2d_int, avg_pool2d_int, max_pool2d_int

__all__ = ["round_shift", "conv2d_int", "linear_int", "max_pool2d_int", "avg_pool2d_int",
           "adaptive_avg_pool2d_int", "add_int", "requantize_int"]
