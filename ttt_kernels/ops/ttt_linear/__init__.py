from .chunk import ttt_linear_prefill
from .decode_dual import ttt_linear_decode_dual, ttt_linear_decode_dual_from_projection
from .decode_dual_cuda import ttt_linear_decode_dual_cuda
from .decode_primal import ttt_linear_decode_primal
from .naive import ttt_linear_decode_dual_ref, ttt_linear_decode_primal_ref, ttt_linear_minibatch_dual_ref

__all__ = ["ttt_linear_decode_dual", "ttt_linear_decode_dual_from_projection", "ttt_linear_decode_dual_cuda",
           "ttt_linear_decode_primal", "ttt_linear_decode_dual_ref", "ttt_linear_decode_primal_ref",
           "ttt_linear_minibatch_dual_ref", "ttt_linear_prefill"]
