// C interface of the CUDA dual-form TTT decode (and TTT-MLP prefill) kernels: raw pointers, sizes and dtype
// codes, no PyTorch types, so the .cu files build with nvcc alone (CI compiles them that way)
// and the PyTorch binding (binding.cpp) stays a thin translation layer.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum TTTDtype { TTT_F32 = 0, TTT_F16 = 1, TTT_BF16 = 2, TTT_F64 = 3, TTT_I32 = 4, TTT_I64 = 5 };

// One decode step of one TTT layer for B sequences x H heads, head dim F, mini-batch K.
// Layouts are those of ttt_kernels.ops.ttt_state.TTTDualState (all contiguous):
//   q, k, v, out [B, H, F] (act dtype); lr [B, H]; pos [B]; ln_w, ln_b [H, F]; tib [K];
//   w: mlp_1 {W [B,H,F,F], b [B,H,F]}; mlp_2 {W1 [B,H,F,4F], b1 [B,H,4F], W2 [B,H,4F,F], b2 [B,H,F]}
//   (state dtype); k_cache, v_cache [B, H, K, F] (act dtype); lr_cache [B, H, K] fp32.
// The weights, the caches, k and v must be 16-byte aligned; q and out 4-byte aligned.
typedef struct TTTDecodeParams {
  const void *q, *k, *v, *lr, *pos, *ln_w, *ln_b, *tib;
  void* out;
  void* w[4];
  void *k_cache, *v_cache;
  float* lr_cache;
  int B, H, F, K;
  int act_dtype, state_dtype;                          // TTT_F32, TTT_F16 or TTT_BF16
  int lr_dtype, ln_w_dtype, ln_b_dtype, tib_dtype;     // any float code
  int pos_dtype;                                       // TTT_I32 or TTT_I64
} TTTDecodeParams;

// Enqueue one step on `stream` (no allocation, no host synchronisation: CUDA-graph safe).
// Returns NULL once launched, else a static message saying why nothing was launched.
const char* ttt_linear_decode_dual_launch(const TTTDecodeParams* p, cudaStream_t stream);
const char* ttt_mlp_decode_dual_launch(const TTTDecodeParams* p, cudaStream_t stream);

// TTT-MLP over whole prompts of T tokens (as ttt_kernels.ops.ttt_mlp.ttt_mlp_prefill): `d` as for a
// step, except q, k, v [B, T, H, F] with batch / token strides below (heads contiguous, every row
// 16-byte aligned), lr [B, T, H] (any float dtype) and out [B, T, H, F] contiguous; sequence b starts
// at pos[b] and runs lengths[b] tokens (int32 or int64). f = 64, K = 16 and 16-bit states only.
typedef struct TTTPrefillParams {
  TTTDecodeParams d;
  const void* lengths;
  int len_dtype, T;
  int64_t sq_b, sq_t, sk_b, sk_t, sv_b, sv_t;
} TTTPrefillParams;

const char* ttt_mlp_prefill_launch(const TTTPrefillParams* p, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
