// TTT-MLP decode kernels with a __half state (one file per state dtype: parallel builds).
#include "ttt_mlp_decode_dual.cuh"

namespace ttt {
TTT_MLP_INSTANTIATE(__half)
}  // namespace ttt
