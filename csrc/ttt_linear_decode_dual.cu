// TTT-Linear (inner net mlp_1) dual-form decode step: one warp per (sequence, head).
//
// Semantics are those of ttt_kernels/ops/ttt_linear/decode_dual.py: with the mini-batch
// so far as rows k_j, v_j, lr_j (j <= t; rows j > t have lr 0),
//   G = lr * ln_l2_grad(K W0 + b0, V - K),   z_bar = q W0 + b0 - eta_t * sum_j (q.k_j + 1) G_j,
//   out = q + LN(z_bar); at t = K-1: W0 += K^T (-eta G), b0 -= eta sum_j G_j; else row t -> cache.
//
// Per warp: W (F x F) and the raw k / v rows arrive in shared memory by cp.async; one pass
// over W's k-steps gives Z = K W (16 rows), attn = K q (q as an n8 column) and q W. While the
// tile's row 15 is free (t < 15) q rides in it, so K W yields q W; at t = 15 each W fragment
// (ldmatrix.trans) is also the A operand of (q W)^T = W^T q. LayerNorm statistics are quad
// shuffles. G's row tile, transposed in registers (movmatrix), is the B operand of the sums
// over rows (one product with an A fragment of attn_j + 1 and ones, row_sums_a) and of the
// update's K^T G.
#include "ttt_decode_dual.cuh"

namespace ttt {
namespace {

template <int F, class TA, class TS>
struct LinearCfg {
  static constexpr int N = Dot<TS>::N, NT = F / 8, KS = F / 16;
  // K rows need a converted copy unless they already are the tensor-core dtype
  static constexpr bool CONVERT = N == 2 || !std::is_same<TA, TS>::value;
  static constexpr int W_ROW = 2 * F, W_PART = F * W_ROW;
  static constexpr int RAW_ROW = F * sizeof(TA), RAW = ROWS * RAW_ROW;
  static constexpr int KD_ROW = 2 * F, KD_PART = ROWS * KD_ROW;
  static constexpr int OFF_K = N * W_PART, OFF_V = OFF_K + RAW, OFF_KD = OFF_V + RAW;
  static constexpr int OFF_VEC = OFF_KD + (CONVERT ? N * KD_PART : 0);
  static constexpr int WARP_BYTES = OFF_VEC + 5 * F * 4;  // gamma, beta, b, q, (q W)
  static constexpr int WARPS = 4 * WARP_BYTES <= 112 * 1024 ? 4 : 2 * WARP_BYTES <= 112 * 1024 ? 2 : 1;
  static constexpr int SMEM = WARPS * WARP_BYTES;
};

template <int F, class TA, class TS>
__global__ void __launch_bounds__(LinearCfg<F, TA, TS>::WARPS * 32)
    ttt_linear_decode_dual_kernel(const TTTDecodeParams P) {
  using Cfg = LinearCfg<F, TA, TS>;
  constexpr int N = Cfg::N, NT = Cfg::NT, KS = Cfg::KS;
  extern __shared__ __align__(128) char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t bh = static_cast<int64_t>(blockIdx.x) * Cfg::WARPS + warp;
  if (bh >= static_cast<int64_t>(P.B) * P.H) return;

  char* ws = smem + warp * Cfg::WARP_BYTES;
  char *sk = ws + Cfg::OFF_K, *sv = ws + Cfg::OFF_V, *skd = Cfg::CONVERT ? ws + Cfg::OFF_KD : sk;
  float* vec = reinterpret_cast<float*>(ws + Cfg::OFF_VEC);
  float *gamma = vec, *beta = vec + F, *bias = vec + 2 * F, *qv = vec + 3 * F, *zqs = vec + 4 * F;
  TS* W = static_cast<TS*>(P.w[0]) + bh * F * F;
  TS* b = static_cast<TS*>(P.w[1]) + bh * F;

  HeadVectors<F, 32, TS, TA> hv;
  hv.load(P, bh, b, lane);
  load_weight_tile<TS, F, F, F, 32>(ws, W, lane);
  const Token tok = load_token(P, bh);
  load_minibatch_rows<TA, F, 32>(sk, sv, P, bh, tok.t, lane);
  cp_async_commit();
  hv.store(gamma, beta, bias, qv, lane);
  const float lr0 = row_lr(P, bh, tok, g), lr1 = row_lr(P, bh, tok, g + 8);
  cp_async_wait<0>();
  __syncwarp();
  if constexpr (Cfg::CONVERT) {
    convert_rows<TA, TS, F, 32>(skd, sk, lane);
    __syncwarp();
  }

  // Z = K W, attn = K q and q W in one pass over W. While row 15 of the mini-batch tile is free
  // (t < 15; its lr is 0) q rides there and K W gives q W too; at t = 15 it is zq^T = W^T q.
  const uint32_t sW = smem_u32(ws), sKd = smem_u32(skd);
  float z[NT][4] = {}, at[4] = {}, zq[KS][4] = {};  // W is square: NT / 2 column-tile pairs = KS
  const bool q_row15 = tok.t < ROWS - 1;
  if (q_row15)
    kw_pass<TS, KS, KS, Cfg::KD_PART, Cfg::KD_ROW, Cfg::W_PART, Cfg::W_ROW, true>(z, at, zq, sKd, sW, 0, qv, lane);
  else
    kw_pass<TS, KS, KS, Cfg::KD_PART, Cfg::KD_ROW, Cfg::W_PART, Cfg::W_ROW>(z, at, zq, sKd, sW, 0, qv, lane);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const float2 bb = *reinterpret_cast<const float2*>(bias + 8 * nt + 2 * c);
    z[nt][0] += bb.x; z[nt][1] += bb.y; z[nt][2] += bb.x; z[nt][3] += bb.y;
  }
  // zqs = q W + b
  if (q_row15) {
    if (g == 7) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) *reinterpret_cast<float2*>(zqs + 8 * nt + 2 * c) = make_float2(z[nt][2], z[nt][3]);
    }
  } else if (c == 0) {
#pragma unroll
    for (int mt = 0; mt < KS; ++mt) {
      zqs[16 * mt + g] = zq[mt][0] + bias[16 * mt + g];
      zqs[16 * mt + 8 + g] = zq[mt][2] + bias[16 * mt + 8 + g];
    }
  }
  // z is now G; before t = 8 rows 8-15 are padding (half the steps of a mini-batch of 16)
  if (tok.t >= 8)
    ln_l2_grad_rows<F, TA>(z, gamma, beta, sk, sv, g, c, lr0, lr1);
  else
    ln_l2_grad_rows<F, TA, false>(z, gamma, beta, sk, sv, g, c, lr0, lr1);

  // G transposed as B operands: sum_j (attn_j + 1) G_j and sum_j G_j (b's update) in one product
  // per column tile, and the update's K^T G
  uint32_t bg[NT][N][2];
  scaled_transposed_b<TS>(bg, z, 1.f);
  float a1[4];
  attn_plus_one(a1, at, c);
  uint32_t aa[N][4];
  row_sums_a<TS>(aa, a1);
  float sg[NT][4] = {}, zb[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) mma<TS>(sg[nt], aa, bg[nt]);
  __syncwarp();  // zqs
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = 8 * nt + 2 * c + e;
      zb[nt][e] = zqs[col] - tok.eta * sg[nt][e];
    }
  write_output<F, TA>(zb, gamma, beta, qv, static_cast<TA*>(P.out) + bh * F, g, c);

  if (tok.t == P.K - 1) {
    // b -= eta sum_j G_j
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int col = 8 * nt + 2 * c;
      if ((nt & 7) == g) st2(b + col, bias[col] - tok.eta * sg[nt][2], bias[col + 1] - tok.eta * sg[nt][3]);
    }
    // W -= eta K^T G
#pragma unroll
    for (int mt = 0; mt < KS; ++mt) {
      uint32_t ka[N][4];
      ldsm4_t<N, Cfg::KD_PART>(ka, sKd + swz<Cfg::KD_ROW>((lane >> 4) * 8 + (lane & 7), 2 * mt + ((lane >> 3) & 1)));
      const int r0 = 16 * mt + g, r1 = r0 + 8;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int col = 8 * nt + 2 * c;
        // exact W0: the shared copy for 16-bit states, global memory for fp32 (shared holds hi/lo)
        float2 w0, w1;
        if constexpr (N == 1) {
          w0 = ld2(reinterpret_cast<const TS*>(ws + swz_el<Cfg::W_ROW, 2>(r0, col)));
          w1 = ld2(reinterpret_cast<const TS*>(ws + swz_el<Cfg::W_ROW, 2>(r1, col)));
        } else {
          w0 = ld2(W + r0 * F + col);
          w1 = ld2(W + r1 * F + col);
        }
        float d[4] = {};
        mma<TS>(d, ka, bg[nt]);
        update2(W + r0 * F + col, w0, d[0], d[1], tok.eta);
        update2(W + r1 * F + col, w1, d[2], d[3], tok.eta);
      }
    }
  } else {
    // append the token to the mini-batch cache (row t)
    append_cache_row<Cfg::RAW_ROW, TA>(P, bh, F, tok, sk, sv, lane);
  }
}

template <int F, class TA, class TS>
const char* launch(const TTTDecodeParams& p, cudaStream_t stream) {
  using Cfg = LinearCfg<F, TA, TS>;
  constexpr auto kernel = ttt_linear_decode_dual_kernel<F, TA, TS>;
  cudaError_t err = allow_smem<kernel>(Cfg::SMEM);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t blocks = (static_cast<int64_t>(p.B) * p.H + Cfg::WARPS - 1) / Cfg::WARPS;
  if (blocks > 0x7fffffff) return "too many (sequence, head) pairs for one launch";
  kernel<<<static_cast<unsigned>(blocks), Cfg::WARPS * 32, Cfg::SMEM, stream>>>(p);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <int F>
const char* dispatch(const TTTDecodeParams& p, cudaStream_t stream) {
  return dispatch_dtype(p.act_dtype, [&](auto ta) {
    return dispatch_dtype(p.state_dtype, [&](auto ts) {
      return launch<F, decltype(ta), decltype(ts)>(p, stream);
    });
  });
}

}  // namespace
}  // namespace ttt

extern "C" const char* ttt_linear_decode_dual_launch(const TTTDecodeParams* p, cudaStream_t stream) {
  return ttt::launch_by_head_dim(*p, [&](auto f) { return ttt::dispatch<decltype(f)::value>(*p, stream); });
}
