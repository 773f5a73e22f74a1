// TTT-MLP decode kernels with a __nv_bfloat16 state (one file per state dtype: parallel builds).
#include "ttt_mlp_decode_dual.cuh"

namespace ttt {
TTT_MLP_INSTANTIATE(__nv_bfloat16)
}  // namespace ttt
