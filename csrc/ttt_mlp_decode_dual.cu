// Dispatch of the TTT-MLP decode step to the kernel instance for (head dim, act dtype, state dtype).
#include "ttt_mlp_decode_dual.cuh"

namespace ttt {
namespace {

template <int F>
const char* dispatch(const TTTDecodeParams& p, cudaStream_t stream) {
  return dispatch_dtype(p.act_dtype, [&](auto ta) {
    return dispatch_dtype(p.state_dtype, [&](auto ts) { return launch_mlp<F, decltype(ta), decltype(ts)>(p, stream); });
  });
}

}  // namespace

#define TTT_MLP_EXTERN(TS)                                                                              \
  extern template const char* launch_mlp<64, float, TS>(const TTTDecodeParams&, cudaStream_t);         \
  extern template const char* launch_mlp<64, __half, TS>(const TTTDecodeParams&, cudaStream_t);        \
  extern template const char* launch_mlp<64, __nv_bfloat16, TS>(const TTTDecodeParams&, cudaStream_t); \
  extern template const char* launch_mlp<128, float, TS>(const TTTDecodeParams&, cudaStream_t);        \
  extern template const char* launch_mlp<128, __half, TS>(const TTTDecodeParams&, cudaStream_t);       \
  extern template const char* launch_mlp<128, __nv_bfloat16, TS>(const TTTDecodeParams&, cudaStream_t);
TTT_MLP_EXTERN(float)
TTT_MLP_EXTERN(__half)
TTT_MLP_EXTERN(__nv_bfloat16)

}  // namespace ttt

extern "C" const char* ttt_mlp_decode_dual_launch(const TTTDecodeParams* p, cudaStream_t stream) {
  return ttt::launch_by_head_dim(*p, [&](auto f) { return ttt::dispatch<decltype(f)::value>(*p, stream); });
}
