// TTT-MLP (inner net mlp_2) dual-form decode step.
//
// Semantics are those of ttt_kernels/ops/ttt_mlp/decode_dual.py: with the mini-batch so
// far as rows k_j, v_j, lr_j (j <= t; rows j > t have lr 0), at the start weights
//   Z1 = K W1 + b1, X2 = gelu(Z1), G2 = lr * ln_l2_grad(X2 W2 + b2, V - K),
//   G1 = (G2 W2^T) * gelu'(Z1),
//   z1_bar = q W1 + b1 - eta sum_j (q.k_j + 1) G1_j,   x2_bar = gelu(z1_bar),
//   z2_bar = x2_bar W2 + b2 - eta sum_j (x2_bar.x2_j + 1) G2_j,   out = q + LN(z2_bar);
// at t = K-1: W1 += K^T (-eta G1), W2 += X2^T (-eta G2), b1, b2 likewise; else row t -> cache.
//
// Work split: the hidden dim (4F) is cut into slices, one per warp; a (sequence, head) is
// one CTA of 4 warps when its W1 and W2 fit in 64 KB of shared memory (F = 64, 16-bit
// state: 3 CTAs per SM), else a cluster of CS CTAs, each holding its slice of W1 and W2
// (F = 128, or fp32 state). Each warp computes its slice of Z1 / X2 (C fragments become
// the A fragments of the next product in registers), its partial of X2 W2, then the
// partials are summed through shared memory (and DSMEM across the cluster); every warp
// derives G2 for all rows, its slice of G1, z1_bar, x2_bar and its partial of x2_bar W2,
// summed again; warp 0 of CTA 0 finishes the output. Each weight is read from global
// memory once per step (cp.async into swizzled tiles; W2 in a second group so the first
// product overlaps its arrival); at the mini-batch end every warp updates its slices.
// With one CTA per head the grid is persistent (as many CTAs as fit at once) and a CTA loads
// the next head's W1 into W1's tile while it finishes the current head.
#pragma once

#include <cooperative_groups.h>

#include <algorithm>

#include "ttt_decode_dual.cuh"

namespace ttt {

template <int F, class TA, class TS>
struct MlpCfg {
  static constexpr int N = Dot<TS>::N, FH = 4 * F, WARPS = 4;
  // CTAs per head: each holds 64 KB of W1 + W2 slices
  static constexpr int CS = (2 * F * FH * 2 * N) / 65536;
  static constexpr int FHC = FH / CS, HW = FHC / WARPS;  // hidden columns per CTA / per warp
  static constexpr int NT = F / 8, KS = F / 16, HT = HW / 8, HS = HW / 16;
  static constexpr bool CONVERT = N == 2 || !std::is_same<TA, TS>::value;
  static constexpr bool FAST = N == 1;  // tanh.approx in gelu for 16-bit states
  static constexpr int W1_ROW = 2 * FHC, W1_PART = F * W1_ROW, W2_ROW = 2 * F, W2_PART = FHC * W2_ROW;
  static constexpr int RAW_ROW = F * sizeof(TA), RAW = ROWS * RAW_ROW;
  static constexpr int KD_ROW = 2 * F, KD_PART = ROWS * KD_ROW;
  static constexpr int OFF_W2 = N * W1_PART, OFF_K = OFF_W2 + N * W2_PART, OFF_V = OFF_K + RAW;
  static constexpr int OFF_KD = OFF_V + RAW, OFF_VEC = OFF_KD + (CONVERT ? N * KD_PART : 0);
  static constexpr int RED2 = F + ROWS;  // per warp: its partial of x2_bar W2 and of x2_bar . x2_j
  // gamma, beta, b2, q (F each), b1 and (q W1) slices (FHC each), RED2 per warp
  static constexpr int SMEM = OFF_VEC + 4 * (4 * F + 2 * FHC + WARPS * RED2);
  static constexpr int MIN_BLOCKS = SMEM <= 74 * 1024 ? 3 : 2;
  // One CTA per head (16-bit states): the grid is persistent, each CTA walks heads
  // blockIdx.x, + gridDim.x, ... and loads the next head's W1 while it computes the current one
  static constexpr bool PERSIST = CS == 1 && N == 1;
  static_assert(CS >= 1 && CS <= 8 && HS >= 1, "unsupported head dim");
  static_assert(WARPS * NT * 32 * 16 <= N * W1_PART, "the partial sums reuse W1's tile");
  static_assert(NT % WARPS == 0, "each warp sums NT / WARPS column tiles");
};

template <int F, class TA, class TS>
__global__ void __launch_bounds__(128, MlpCfg<F, TA, TS>::MIN_BLOCKS)
    ttt_mlp_decode_dual_kernel(const TTTDecodeParams P) {
  using Cfg = MlpCfg<F, TA, TS>;
  constexpr int N = Cfg::N, FH = Cfg::FH, FHC = Cfg::FHC, HW = Cfg::HW, CS = Cfg::CS;
  constexpr int NT = Cfg::NT, KS = Cfg::KS, HT = Cfg::HT, HS = Cfg::HS;
  namespace cg = cooperative_groups;
  extern __shared__ __align__(128) char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
  int rank = 0;
  if constexpr (CS > 1) rank = static_cast<int>(cg::this_cluster().block_rank());
  const int hc0 = rank * FHC, hw0 = warp * HW;  // hidden offsets: CTA's slice in the head, warp's in the CTA
  const int64_t BH = static_cast<int64_t>(P.B) * P.H, step = Cfg::PERSIST ? gridDim.x : BH;
  int64_t bh = blockIdx.x / CS;
  // with PERSIST, W1 of the CTA's first head; each later head's W1 is loaded during the previous
  // head, in two halves: rows F/2.. once the warps are done reading W1's tile, rows ..F/2 once
  // the partial sums that reuse them are read. Either way W1 completes with the rows' group.
  const auto w1_of = [&](int64_t head) { return static_cast<TS*>(P.w[0]) + head * F * FH; };
  if constexpr (Cfg::PERSIST) load_weight_tile<TS, F, FHC, FH, 128>(smem, w1_of(bh), tid);
  do {  // the grid never exceeds the heads: every CTA has one (and without PERSIST, only one)
    const auto prefetch_w1_rows = [&](int r0) {  // rows [r0, r0 + F/2) of the next head's W1, as one group
      if constexpr (Cfg::PERSIST) {
        if (bh + step < BH)
          load_weight_tile<TS, F / 2, FHC, FH, 128>(smem + r0 * Cfg::W1_ROW, w1_of(bh + step) + r0 * FH, tid);
        cp_async_commit();
      }
    };

    char *sk = smem + Cfg::OFF_K, *sv = smem + Cfg::OFF_V, *skd = Cfg::CONVERT ? smem + Cfg::OFF_KD : sk;
    float* vec = reinterpret_cast<float*>(smem + Cfg::OFF_VEC);
    float *gamma = vec, *beta = vec + F, *b2s = vec + 2 * F, *qv = vec + 3 * F;
    float *b1s = vec + 4 * F, *zqs = b1s + FHC, *red2 = zqs + FHC;
    TS* W1 = w1_of(bh);
    TS* b1 = static_cast<TS*>(P.w[1]) + bh * FH;
    TS* W2 = static_cast<TS*>(P.w[2]) + bh * FH * F;
    TS* b2 = static_cast<TS*>(P.w[3]) + bh * F;

    // the head's vectors first: their loads are in flight during the token's dependent ones
    constexpr int PB1 = (FHC + 127) / 128;
    float b1v[PB1];
    load_f32<TS, FHC, 128>(b1v, b1 + hc0, tid);
    HeadVectors<F, 128, TS, TA> hv;
    hv.load(P, bh, b2, tid);
    const Token tok = load_token(P, bh);
    const bool last = tok.t == P.K - 1;
    if constexpr (!Cfg::PERSIST) load_weight_tile<TS, F, FHC, FH, 128>(smem, W1 + hc0, tid);
    load_minibatch_rows<TA, F, 128>(sk, sv, P, bh, tok.t, tid);
    cp_async_commit();
    load_weight_tile<TS, FHC, F, F, 128>(smem + Cfg::OFF_W2, W2 + static_cast<int64_t>(hc0) * F, tid);
    cp_async_commit();
    hv.store(gamma, beta, b2s, qv, tid);
  #pragma unroll
    for (int k = 0; k < PB1; ++k)
      if (tid + 128 * k < FHC) b1s[tid + 128 * k] = b1v[k];
    const float lr0 = row_lr(P, bh, tok, g), lr1 = row_lr(P, bh, tok, g + 8);
    cp_async_wait<1>();  // W1 and the rows
    __syncthreads();
    if constexpr (Cfg::CONVERT) {
      convert_rows<TA, TS, F, 128>(skd, sk, tid);
      __syncthreads();
    }

    // ---- Z1 = K W1 (this warp's hidden slice), attn1 = K q, zq1^T = W1^T q
    const uint32_t sW1 = smem_u32(smem), sW2 = smem_u32(smem + Cfg::OFF_W2), sKd = smem_u32(skd);
    float gp[HT][4] = {}, at[4] = {}, zq[HS][4] = {};
    kw_pass<TS, KS, HS, Cfg::KD_PART, Cfg::KD_ROW, Cfg::W1_PART, Cfg::W1_ROW>(gp, at, zq, sKd, sW1, hw0 / 8, qv, lane);
    // X2 = gelu(Z1 + b1) as the A fragments of the products over the hidden dim; keep gelu'(Z1)
    uint32_t xa[HS][N][4];
  #pragma unroll
    for (int nt = 0; nt < HT; ++nt) {
      const float2 bb = *reinterpret_cast<const float2*>(b1s + hw0 + 8 * nt + 2 * c);
      float x[4];
  #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float zz = gp[nt][e] + ((e & 1) ? bb.y : bb.x);
        x[e] = gelu<Cfg::FAST>(zz, &gp[nt][e]);
      }
      uint32_t p0[N], p1[N];
      pack<TS>(p0, x[0], x[1]);
      pack<TS>(p1, x[2], x[3]);
  #pragma unroll
      for (int n = 0; n < N; ++n) {
        xa[nt / 2][n][(nt & 1) * 2] = p0[n];
        xa[nt / 2][n][(nt & 1) * 2 + 1] = p1[n];
      }
    }
    if (c == 0) {
  #pragma unroll
      for (int mt = 0; mt < HS; ++mt) {
        zqs[hw0 + 16 * mt + g] = zq[mt][0];
        zqs[hw0 + 16 * mt + 8 + g] = zq[mt][2];
      }
    }
    const float a0 = __shfl_sync(FULL, at[0], lane & ~3) + 1.f, a1 = __shfl_sync(FULL, at[2], lane & ~3) + 1.f;

    cp_async_wait<0>();  // W2
    __syncthreads();     // also: every warp is done reading W1's tile, which now holds partial sums
    prefetch_w1_rows(F / 2);

    // ---- Z2 = X2 W2 + b2: this warp's partial over its hidden slice, then summed
    float z2[NT][4] = {};
  #pragma unroll
    for (int s = 0; s < HS; ++s) mma_w_rows<TS, NT / 2, Cfg::W2_PART, Cfg::W2_ROW>(z2, xa[s], sW2, hw0 + 16 * s, lane);
    float4* red = reinterpret_cast<float4*>(smem);  // [warp][NT][lane]: fragment order, conflict-free
  #pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      red[(warp * NT + nt) * 32 + lane] = make_float4(z2[nt][0], z2[nt][1], z2[nt][2], z2[nt][3]);
    __syncthreads();
  #pragma unroll
    for (int i = 0; i < NT / 4; ++i) {  // warp w sums a quarter of the tiles into slot 0
      const int nt = warp * (NT / 4) + i;
      float4 s = red[nt * 32 + lane];
  #pragma unroll
      for (int w = 1; w < 4; ++w) {
        const float4 x = red[(w * NT + nt) * 32 + lane];
        s.x += x.x; s.y += x.y; s.z += x.z; s.w += x.w;
      }
      red[nt * 32 + lane] = s;
    }
    if constexpr (CS > 1) cg::this_cluster().sync(); else __syncthreads();
  #pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  #pragma unroll
      for (int r = 0; r < CS; ++r) {  // the same order in every CTA: identical G2 everywhere
        const float4* src = red;
        if constexpr (CS > 1) src = cg::this_cluster().map_shared_rank(red, r);
        const float4 x = src[nt * 32 + lane];
        s.x += x.x; s.y += x.y; s.z += x.z; s.w += x.w;
      }
      const float2 bb = *reinterpret_cast<const float2*>(b2s + 8 * nt + 2 * c);
      z2[nt][0] = s.x + bb.x; z2[nt][1] = s.y + bb.y; z2[nt][2] = s.z + bb.x; z2[nt][3] = s.w + bb.y;
    }
    ln_l2_grad_rows<F, TA>(z2, gamma, beta, sk, sv, g, c, lr0, lr1);  // z2 is now G2

    // ---- G1 = (G2 W2^T) * gelu'(Z1) for this warp's hidden slice
    uint32_t ga[KS][N][4];
  #pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      uint32_t p0[N], p1[N];
      pack<TS>(p0, z2[nt][0], z2[nt][1]);
      pack<TS>(p1, z2[nt][2], z2[nt][3]);
  #pragma unroll
      for (int n = 0; n < N; ++n) {
        ga[nt / 2][n][(nt & 1) * 2] = p0[n];
        ga[nt / 2][n][(nt & 1) * 2 + 1] = p1[n];
      }
    }
    float g1[HT][4] = {};
  #pragma unroll
    for (int s = 0; s < KS; ++s)
  #pragma unroll
      for (int np = 0; np < HS; ++np) {
        uint32_t r[N][4], b0[N][2], b1f[N][2];
        ldsm4<N, Cfg::W2_PART>(
            r, sW2 + swz<Cfg::W2_ROW>(hw0 + 16 * np + (lane & 7) + (lane >> 4) * 8, 2 * s + ((lane >> 3) & 1)));
        b_halves(r, b0, b1f);
        mma<TS>(g1[2 * np], ga[s], b0);
        mma<TS>(g1[2 * np + 1], ga[s], b1f);
      }
    // z1_bar = zq1 + b1 - eta sum_j attn1_j G1_j, x2_bar = gelu(z1_bar) (columns 8nt+2c+e of the slice)
    float xb[HT][2];
  #pragma unroll
    for (int nt = 0; nt < HT; ++nt) {
  #pragma unroll
      for (int e = 0; e < 4; ++e) g1[nt][e] *= gp[nt][e];
  #pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = hw0 + 8 * nt + 2 * c + e;
        xb[nt][e] = gelu<Cfg::FAST>(zqs[col] + b1s[col] - tok.eta * col_sum(a0 * g1[nt][e] + a1 * g1[nt][e + 2]));
      }
    }
    // ---- partial x2_bar W2 (x2_bar as row 0 of an A tile) and partial x2_bar . x2_j
    float xw[NT][4] = {};
    float xx0 = 0.f, xx1 = 0.f;
  #pragma unroll
    for (int s = 0; s < HS; ++s) {
      uint32_t xba[N][4], lo[N], hi[N];
      pack<TS>(lo, g == 0 ? xb[2 * s][0] : 0.f, g == 0 ? xb[2 * s][1] : 0.f);
      pack<TS>(hi, g == 0 ? xb[2 * s + 1][0] : 0.f, g == 0 ? xb[2 * s + 1][1] : 0.f);
  #pragma unroll
      for (int n = 0; n < N; ++n) {
        xba[n][0] = lo[n]; xba[n][1] = 0u; xba[n][2] = hi[n]; xba[n][3] = 0u;
      }
  #pragma unroll
      for (int half = 0; half < 2; ++half) {
        uint32_t u0[N], u1[N];
  #pragma unroll
        for (int n = 0; n < N; ++n) {
          u0[n] = xa[s][n][2 * half];
          u1[n] = xa[s][n][2 * half + 1];
        }
        const float2 x0 = unpack<TS>(u0), x1 = unpack<TS>(u1);
        xx0 += x0.x * xb[2 * s + half][0] + x0.y * xb[2 * s + half][1];
        xx1 += x1.x * xb[2 * s + half][0] + x1.y * xb[2 * s + half][1];
      }
      mma_w_rows<TS, NT / 2, Cfg::W2_PART, Cfg::W2_ROW>(xw, xba, sW2, hw0 + 16 * s, lane);
    }
    xx0 = quad_sum(xx0);
    xx1 = quad_sum(xx1);
    float* my = red2 + warp * Cfg::RED2;
    if (g == 0) {
  #pragma unroll
      for (int nt = 0; nt < NT; ++nt) st2(my + 8 * nt + 2 * c, xw[nt][0], xw[nt][1]);
    }
    if (c == 0) {
      my[F + g] = xx0;
      my[F + g + 8] = xx1;
    }
    if constexpr (CS > 1) cg::this_cluster().sync(); else __syncthreads();
    prefetch_w1_rows(0);  // the partial sums in those rows are read

    if (rank == 0 && warp == 0) {
      // z2_bar = x2_bar W2 + b2 - eta sum_j (x2_bar.x2_j + 1) G2_j, out = q + LN(z2_bar)
      float xwt[NT][2] = {}, e0 = 1.f, e1 = 1.f;
  #pragma unroll
      for (int r = 0; r < CS; ++r) {
        const float* src = red2;
        if constexpr (CS > 1) src = cg::this_cluster().map_shared_rank(red2, r);
  #pragma unroll
        for (int w = 0; w < Cfg::WARPS; ++w) {
  #pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const float2 x = *reinterpret_cast<const float2*>(src + w * Cfg::RED2 + 8 * nt + 2 * c);
            xwt[nt][0] += x.x;
            xwt[nt][1] += x.y;
          }
          e0 += src[w * Cfg::RED2 + F + g];
          e1 += src[w * Cfg::RED2 + F + g + 8];
        }
      }
  #pragma unroll
      for (int nt = 0; nt < NT; ++nt)
  #pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = 8 * nt + 2 * c + e;
          xwt[nt][e] += b2s[col] - tok.eta * col_sum(e0 * z2[nt][e] + e1 * z2[nt][e + 2]);
        }
      write_output<F, TA>(xwt, gamma, beta, qv, static_cast<TA*>(P.out) + bh * F, g, c);
      if (last) {
  #pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float s0 = col_sum(z2[nt][0] + z2[nt][2]), s1 = col_sum(z2[nt][1] + z2[nt][3]);
          const int col = 8 * nt + 2 * c;
          if ((nt & 7) == g) st2(b2 + col, b2s[col] - tok.eta * s0, b2s[col + 1] - tok.eta * s1);
        }
      } else {
        append_cache_row<Cfg::RAW_ROW, TA>(P, bh, F, tok, sk, sv, lane);
      }
    }

    if (last) {
      // b1 -= eta sum_j G1_j (this warp's slice)
  #pragma unroll
      for (int nt = 0; nt < HT; ++nt) {
        const float s0 = col_sum(g1[nt][0] + g1[nt][2]), s1 = col_sum(g1[nt][1] + g1[nt][3]);
        const int col = hw0 + 8 * nt + 2 * c;
        if (g == 0) st2(b1 + hc0 + col, b1s[col] - tok.eta * s0, b1s[col + 1] - tok.eta * s1);
      }
      // W1[:, slice] += K^T (-eta G1): W1's tile was overwritten, so W1 comes from global memory (L2)
      uint32_t bg[HT][N][2];
      scaled_transposed_b<TS>(bg, g1, -tok.eta);
  #pragma unroll
      for (int mt = 0; mt < KS; ++mt) {
        uint32_t ka[N][4];
        ldsm4_t<N, Cfg::KD_PART>(ka, sKd + swz<Cfg::KD_ROW>((lane >> 4) * 8 + (lane & 7), 2 * mt + ((lane >> 3) & 1)));
        TS* r0 = W1 + (16 * mt + g) * FH + hc0 + hw0 + 2 * c;
        TS* r1 = r0 + 8 * FH;
  #pragma unroll
        for (int nt = 0; nt < HT; ++nt) {
          const float2 w0 = ld2(r0 + 8 * nt), w1 = ld2(r1 + 8 * nt);
          float acc[4] = {w0.x, w0.y, w1.x, w1.y};
          mma<TS>(acc, ka, bg[nt]);
          st2(r0 + 8 * nt, acc[0], acc[1]);
          st2(r1 + 8 * nt, acc[2], acc[3]);
        }
      }
      // W2[slice, :] += X2^T (-eta G2): X2^T's A fragments are X2's, each 8x8 block transposed
      uint32_t bg2[NT][N][2];
      scaled_transposed_b<TS>(bg2, z2, -tok.eta);
  #pragma unroll
      for (int s = 0; s < HS; ++s) {
        uint32_t xt[N][4];
  #pragma unroll
        for (int n = 0; n < N; ++n) {
          xt[n][0] = movt(xa[s][n][0]);
          xt[n][1] = movt(xa[s][n][2]);
          xt[n][2] = movt(xa[s][n][1]);
          xt[n][3] = movt(xa[s][n][3]);
        }
        const int l0 = hw0 + 16 * s + g, l1 = l0 + 8;  // rows of the CTA's W2 slice
        TS* r0 = W2 + static_cast<int64_t>(hc0 + l0) * F + 2 * c;
        TS* r1 = r0 + 8 * F;
  #pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          float2 w0, w1;
          if constexpr (N == 1) {  // W2's tile is intact and exact for 16-bit states
            w0 = ld2(reinterpret_cast<const TS*>(smem + Cfg::OFF_W2 + swz_el<Cfg::W2_ROW, 2>(l0, 8 * nt + 2 * c)));
            w1 = ld2(reinterpret_cast<const TS*>(smem + Cfg::OFF_W2 + swz_el<Cfg::W2_ROW, 2>(l1, 8 * nt + 2 * c)));
          } else {
            w0 = ld2(r0 + 8 * nt);
            w1 = ld2(r1 + 8 * nt);
          }
          float acc[4] = {w0.x, w0.y, w1.x, w1.y};
          mma<TS>(acc, xt, bg2[nt]);
          st2(r0 + 8 * nt, acc[0], acc[1]);
          st2(r1 + 8 * nt, acc[2], acc[3]);
        }
      }
    }
    if constexpr (CS > 1) cg::this_cluster().sync();  // no CTA leaves while others may read its shared memory
    if constexpr (Cfg::PERSIST) __syncthreads();      // the next head's rows, W2 and vectors overwrite these
  } while (Cfg::PERSIST && (bh += step) < BH);
}

template <int F, class TA, class TS>
const char* launch_mlp(const TTTDecodeParams& p, cudaStream_t stream) {
  using Cfg = MlpCfg<F, TA, TS>;
  constexpr auto kernel = ttt_mlp_decode_dual_kernel<F, TA, TS>;
  cudaError_t err = allow_smem<kernel>(Cfg::SMEM);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  int64_t blocks = static_cast<int64_t>(p.B) * p.H * Cfg::CS;
  if constexpr (Cfg::PERSIST) {  // as many CTAs as fit on the GPU at once
    int64_t resident = 0;
    err = resident_ctas<kernel>(128, Cfg::SMEM, &resident);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    blocks = std::min(blocks, resident);
  }
  if (blocks > 0x7fffffff) return "too many (sequence, head) pairs for one launch";
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(128);
  cfg.dynamicSmemBytes = Cfg::SMEM;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = Cfg::CS;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = Cfg::CS > 1 ? 1 : 0;
  err = cudaLaunchKernelEx(&cfg, kernel, p);
  if (err == cudaSuccess) err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// instantiated per state dtype in ttt_mlp_decode_dual_<dtype>.cu (parallel builds)
#define TTT_MLP_INSTANTIATE(TS)                                                                      \
  template const char* launch_mlp<64, float, TS>(const TTTDecodeParams&, cudaStream_t);          \
  template const char* launch_mlp<64, __half, TS>(const TTTDecodeParams&, cudaStream_t);         \
  template const char* launch_mlp<64, __nv_bfloat16, TS>(const TTTDecodeParams&, cudaStream_t);  \
  template const char* launch_mlp<128, float, TS>(const TTTDecodeParams&, cudaStream_t);         \
  template const char* launch_mlp<128, __half, TS>(const TTTDecodeParams&, cudaStream_t);        \
  template const char* launch_mlp<128, __nv_bfloat16, TS>(const TTTDecodeParams&, cudaStream_t);

}  // namespace ttt
