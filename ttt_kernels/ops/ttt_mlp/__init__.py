from .chunk import ttt_mlp_prefill
from .chunk_cuda import cuda_prefill_supported, ttt_mlp_prefill_cuda
from .decode_dual import ttt_mlp_decode_dual, w1_hidden_major
from .decode_dual_cuda import ttt_mlp_decode_dual_cuda
from .decode_primal import ttt_mlp_decode_primal
from .naive import ttt_mlp_decode_dual_ref, ttt_mlp_decode_primal_ref, ttt_mlp_minibatch_dual_ref

__all__ = ["cuda_prefill_supported", "ttt_mlp_decode_dual", "ttt_mlp_decode_dual_cuda", "ttt_mlp_decode_primal",
           "ttt_mlp_decode_dual_ref", "ttt_mlp_decode_primal_ref", "ttt_mlp_minibatch_dual_ref", "ttt_mlp_prefill",
           "ttt_mlp_prefill_cuda", "w1_hidden_major"]
