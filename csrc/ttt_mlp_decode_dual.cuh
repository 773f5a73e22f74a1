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
// the A fragments of the next product in registers), its partial of X2 W2; each warp sums
// the partials of 4 of the 16 rows (through shared memory, and DSMEM across the cluster),
// derives their G2 and stores it in a shared tile of dot operands; then every warp forms its
// slice of G1, z1_bar, x2_bar and its partial of x2_bar W2, summed again; warp 0 of CTA 0
// finishes the output. Sums over the mini-batch rows are tensor-core products with a
// one-vector A fragment (row_sums_a), not shuffles. Each weight is read from global
// memory once per step (cp.async into swizzled tiles; W2 in a second group so the first
// product overlaps its arrival); at the mini-batch end every warp updates its slices.
// With one CTA per head the grid is persistent (as many CTAs as fit at once) and a CTA loads
// the next head's W1 into W1's tile while it finishes the current head, unless the head ends
// its mini-batch: then the update reads W1 from the tile (the rows under the partial sums are
// copied back from global memory while G1 is formed), updates both tiles in place and stores
// them in 16-byte rows, and the next head loads its own W1.
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
  static constexpr int OFF_KD = OFF_V + RAW;
  static constexpr int RED2 = F + ROWS;  // per warp: its partial of x2_bar W2 and of x2_bar . x2_j
  // G2 as dot operands (rows of 2F bytes, N parts), written by the warp that owns the row
  static constexpr int G_ROW = 2 * F, G_PART = ROWS * G_ROW, OFF_G2 = OFF_KD + (CONVERT ? N * KD_PART : 0);
  static constexpr int OFF_VEC = OFF_G2 + N * G_PART;
  // each warp derives G2 for RPW rows: LPR lanes a row, CPL chunks of 4 columns a lane
  static constexpr int RPW = ROWS / WARPS, LPR = 32 / RPW, CPL = F / 4 / LPR;
  // gamma, beta, b2, q (F each), b1 and (q W1) slices (FHC each), RED2 per warp
  static constexpr int SMEM = OFF_VEC + 4 * (4 * F + 2 * FHC + WARPS * RED2);
  // 3 CTAs per SM: 228 KB per SM, 1 KB of it reserved per CTA
  static constexpr int MIN_BLOCKS = SMEM <= 75 * 1024 ? 3 : 2;
  // One CTA per head (16-bit states): the grid is persistent, each CTA walks heads
  // blockIdx.x, + gridDim.x, ... and loads the next head's W1 while it computes the current one
  static constexpr bool PERSIST = CS == 1 && N == 1;
  static_assert(CS >= 1 && CS <= 8 && HS >= 1, "unsupported head dim");
  // the partial sums of Z2 reuse W1's tile: with PERSIST only rows 0..F/2, the rest takes the next head's W1
  static_assert(WARPS * ROWS * F * 4 <= N * W1_PART / (PERSIST ? 2 : 1), "the partial sums reuse W1's tile");
  static_assert(ROWS % WARPS == 0 && CPL >= 1, "each warp derives whole rows of G2");
};

// The partial sums of Z2: per warp ROWS rows of F fp32 values in W1's tile, 16-byte chunks
// XOR-swizzled by row so that the C-fragment stores and the row reads are free of bank conflicts.
template <int F>
__device__ __forceinline__ int red_el(int row, int col) {
  return row * F + 4 * ((col >> 2) ^ (row & 7)) + (col & 3);
}
template <int F>
__device__ __forceinline__ float* red_slot(float* red, int warp) { return red + warp * ROWS * F; }

// G2 = lr * ln_l2_grad(Z2 + b2, V - K) for this warp's RPW rows (Z2 summed over the warps' partial
// sums of every CTA of the cluster, in one order everywhere), stored as dot operands in G2's tile.
// Lane l works on row warp * RPW + l / LPR, 4-column chunks l % LPR + LPR h (conflict-free reads);
// the row statistics are 3-level shuffles among the row's lanes. A warp whose rows all lie past
// the token (t) writes zeros: at the mean t = 7.5, 1.5 of the 4 warps skip the work.
template <int F, class TA, class TS>
__device__ __forceinline__ void g2_rows(char* smem, const float* gamma, const float* beta, const float* b2s,
                                        const char* sk, const char* sv, float lr, int t, int warp, int lane) {
  using Cfg = MlpCfg<F, TA, TS>;
  constexpr int CPL = Cfg::CPL, LPR = Cfg::LPR, N = Cfg::N;
  namespace cg = cooperative_groups;
  const int row = warp * Cfg::RPW + lane / LPR, q = lane % LPR;
  float gr[CPL][4] = {};  // stays 0 for a warp whose rows are not in the mini-batch yet (warp-uniform)
  if (warp * Cfg::RPW <= t) {
    float* red = reinterpret_cast<float*>(smem);
    float z[CPL][4];
#pragma unroll
    for (int h = 0; h < CPL; ++h) {
      const int col = 4 * (q + LPR * h);
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int r = 0; r < Cfg::CS; ++r) {
        const float* src = red;
        if constexpr (Cfg::CS > 1) src = cg::this_cluster().map_shared_rank(red, r);
#pragma unroll
        for (int w = 0; w < Cfg::WARPS; ++w) {
          const float4 x = *reinterpret_cast<const float4*>(src + w * ROWS * F + red_el<F>(row, col));
          acc.x += x.x; acc.y += x.y; acc.z += x.z; acc.w += x.w;
        }
      }
      const float4 bb = *reinterpret_cast<const float4*>(b2s + col);
      z[h][0] = acc.x + bb.x; z[h][1] = acc.y + bb.y; z[h][2] = acc.z + bb.z; z[h][3] = acc.w + bb.w;
    }
    const auto row_sum = [](float x) {
#pragma unroll
      for (int m = 1; m < LPR; m *= 2) x += __shfl_xor_sync(FULL, x, m);
      return x;
    };
    float m = 0.f;
#pragma unroll
    for (int h = 0; h < CPL; ++h) m += (z[h][0] + z[h][1]) + (z[h][2] + z[h][3]);
    m = row_sum(m) * (1.f / F);
    float var = 0.f;
#pragma unroll
    for (int h = 0; h < CPL; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        z[h][i] -= m;
        var += z[h][i] * z[h][i];
      }
    const float rstd = rsqrtf(row_sum(var) * (1.f / F) + LN_EPS);
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int h = 0; h < CPL; ++h) {
      const int col = 4 * (q + LPR * h);
      const float4 ga = *reinterpret_cast<const float4*>(gamma + col);
      const float4 be = *reinterpret_cast<const float4*>(beta + col);
      const float gv[4] = {ga.x, ga.y, ga.z, ga.w}, bv[4] = {be.x, be.y, be.z, be.w};
#pragma unroll
      for (int i = 0; i < 4; i += 2) {
        const float2 k = ld2(reinterpret_cast<const TA*>(sk + swz_el<Cfg::RAW_ROW, sizeof(TA)>(row, col + i)));
        const float2 v = ld2(reinterpret_cast<const TA*>(sv + swz_el<Cfg::RAW_ROW, sizeof(TA)>(row, col + i)));
        const float tg[2] = {v.x - k.x, v.y - k.y};
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = z[h][i + e];
          x *= rstd;  // now x_hat
          float& gh = gr[h][i + e];
          gh = (gv[i + e] * x + bv[i + e] - tg[e]) * gv[i + e];
          s1 += gh;
          s2 += gh * x;
        }
      }
    }
    s1 = row_sum(s1);
    s2 = row_sum(s2);
    const float f = rstd * (1.f / F) * lr;
#pragma unroll
    for (int h = 0; h < CPL; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i) gr[h][i] = (F * gr[h][i] - s1 - z[h][i] * s2) * f;
  }
  char* tile = smem + Cfg::OFF_G2;
#pragma unroll
  for (int h = 0; h < CPL; ++h) {
    uint32_t p0[N], p1[N];
    pack<TS>(p0, gr[h][0], gr[h][1]);
    pack<TS>(p1, gr[h][2], gr[h][3]);
#pragma unroll
    for (int n = 0; n < N; ++n)
      *reinterpret_cast<uint2*>(tile + n * Cfg::G_PART + swz_el<Cfg::G_ROW, 2>(row, 4 * (q + LPR * h))) =
          make_uint2(p0[n], p1[n]);
  }
}

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
  // With PERSIST, a head's W1 is loaded during the previous head, in two halves: rows F/2.. once
  // the warps are done reading W1's tile, rows ..F/2 once the partial sums that reuse them are
  // read. The next head's W2 follows once the last product with W2 is done. Neither is loaded so
  // during a head that ends its mini-batch (the update reads both tiles): `prefetch` says whether
  // this head loads the next one's, `prefetched` whether the previous head loaded this one's.
  // Either way W1 completes with the rows' group.
  const auto w1_of = [&](int64_t head) { return static_cast<TS*>(P.w[0]) + head * F * FH; };
  const auto w2_of = [&](int64_t head) {  // the CTA's hidden rows of the head's W2
    return static_cast<TS*>(P.w[2]) + head * FH * F + static_cast<int64_t>(hc0) * F;
  };
  bool prefetched = false;
  do {  // the grid never exceeds the heads: every CTA has one (and without PERSIST, only one)

    char *sk = smem + Cfg::OFF_K, *sv = smem + Cfg::OFF_V, *skd = Cfg::CONVERT ? smem + Cfg::OFF_KD : sk;
    float* vec = reinterpret_cast<float*>(smem + Cfg::OFF_VEC);
    float *gamma = vec, *beta = vec + F, *b2s = vec + 2 * F, *qv = vec + 3 * F;
    float *b1s = vec + 4 * F, *zqs = b1s + FHC, *red2 = zqs + FHC;
    TS* W1 = w1_of(bh);
    TS* b1 = static_cast<TS*>(P.w[1]) + bh * FH;
    TS* W2 = w2_of(bh);
    TS* b2 = static_cast<TS*>(P.w[3]) + bh * F;

    // the head's vectors first: their loads are in flight during the token's dependent ones
    constexpr int PB1 = (FHC + 127) / 128;
    float b1v[PB1];
    load_f32<TS, FHC, 128>(b1v, b1 + hc0, tid);
    HeadVectors<F, 128, TS, TA> hv;
    hv.load(P, bh, b2, tid);
    const Token tok = load_token(P, bh);
    const bool last = tok.t == P.K - 1;
    const bool prefetch = Cfg::PERSIST && !last && bh + step < BH;
    if (!prefetched) load_weight_tile<TS, F, FHC, FH, 128>(smem, W1 + hc0, tid);
    const auto prefetch_w1_rows = [&](int r0) {  // rows [r0, r0 + F/2) of the next head's W1, as one group
      if constexpr (Cfg::PERSIST) {
        if (prefetch)
          load_weight_tile<TS, F / 2, FHC, FH, 128>(smem + r0 * Cfg::W1_ROW, w1_of(bh + step) + r0 * FH, tid);
        cp_async_commit();
      }
    };
    load_minibatch_rows<TA, F, 128>(sk, sv, P, bh, tok.t, tid);
    cp_async_commit();
    if (!prefetched) load_weight_tile<TS, FHC, F, F, 128>(smem + Cfg::OFF_W2, W2, tid);
    cp_async_commit();  // (empty when W2 came with the previous head: the group count stays the same)
    hv.store(gamma, beta, b2s, qv, tid);
  #pragma unroll
    for (int k = 0; k < PB1; ++k)
      if (tid + 128 * k < FHC) b1s[tid + 128 * k] = b1v[k];
    const float lr_row = row_lr(P, bh, tok, warp * Cfg::RPW + lane / Cfg::LPR);  // g2_rows' row
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
    // X2 = gelu(Z1 + b1) as the A fragments of the products over the hidden dim; keep gelu'(Z1).
    // Before t = 8 the rows 8-15 are padding: X2 and gelu' are 0 there, not computed (their G2 is 0)
    uint32_t xa[HS][N][4];
    const auto gelu_rows = [&](int p) {  // row g + 8p: elements 2p, 2p + 1 of every n-tile
  #pragma unroll
      for (int nt = 0; nt < HT; ++nt) {
        const float2 bb = *reinterpret_cast<const float2*>(b1s + hw0 + 8 * nt + 2 * c);
        const float x0 = gelu<Cfg::FAST>(gp[nt][2 * p] + bb.x, &gp[nt][2 * p]);
        const float x1 = gelu<Cfg::FAST>(gp[nt][2 * p + 1] + bb.y, &gp[nt][2 * p + 1]);
        uint32_t pk[N];
        pack<TS>(pk, x0, x1);
  #pragma unroll
        for (int n = 0; n < N; ++n) xa[nt / 2][n][(nt & 1) * 2 + p] = pk[n];
      }
    };
    gelu_rows(0);
    if (tok.t >= 8) {
      gelu_rows(1);
    } else {
  #pragma unroll
      for (int nt = 0; nt < HT; ++nt) {
        gp[nt][2] = gp[nt][3] = 0.f;
  #pragma unroll
        for (int n = 0; n < N; ++n) xa[nt / 2][n][(nt & 1) * 2 + 1] = 0u;
      }
    }
    if (c == 0) {
  #pragma unroll
      for (int mt = 0; mt < HS; ++mt) {
        zqs[hw0 + 16 * mt + g] = zq[mt][0];
        zqs[hw0 + 16 * mt + 8 + g] = zq[mt][2];
      }
    }
    float a1[4];  // attn_j + 1 for the row sums of G1, below
    attn_plus_one(a1, at, c);

    cp_async_wait<0>();  // W2
    __syncthreads();     // also: every warp is done reading W1's tile, which now holds partial sums
    prefetch_w1_rows(F / 2);

    // ---- Z2 = X2 W2: this warp's partial over its hidden slice, to its slot of W1's tile
    {
      float z2[NT][4] = {};
  #pragma unroll
      for (int s = 0; s < HS; ++s)
        mma_w_rows<TS, NT / 2, Cfg::W2_PART, Cfg::W2_ROW>(z2, xa[s], sW2, hw0 + 16 * s, lane);
      float* mine = red_slot<F>(reinterpret_cast<float*>(smem), warp);
  #pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        st2(mine + red_el<F>(g, 8 * nt + 2 * c), z2[nt][0], z2[nt][1]);
        st2(mine + red_el<F>(g + 8, 8 * nt + 2 * c), z2[nt][2], z2[nt][3]);
      }
    }
    if constexpr (CS > 1) cg::this_cluster().sync(); else __syncthreads();
    // ---- G2 = lr * ln_l2_grad(Z2 + b2, V - K): each warp sums and differentiates ROWS / WARPS rows
    // (every CTA of a cluster all of them, in the same order: identical G2 everywhere) and stores
    // them as dot operands in G2's tile, read from there by every warp
    g2_rows<F, TA, TS>(smem, gamma, beta, b2s, sk, sv, lr_row, tok.t, warp, lane);
    __syncthreads();
    if (Cfg::PERSIST && last) {  // W1's rows under the partial sums, back for the update
      load_weight_tile<TS, F / 2, FHC, FH, 128>(smem, W1, tid);
      cp_async_commit();
    }
    const uint32_t sG2 = smem_u32(smem + Cfg::OFF_G2);

    // ---- G1 = (G2 W2^T) * gelu'(Z1) for this warp's hidden slice
    uint32_t ga[KS][N][4];
  #pragma unroll
    for (int s = 0; s < KS; ++s) ldsm4<N, Cfg::G_PART>(ga[s], sG2 + swz<Cfg::G_ROW>(lane & 15, 2 * s + (lane >> 4)));
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
    // sum_j (attn_j + 1) G1_j (rows 0-7 of the product) and sum_j G1_j (rows 8-15, b1's update) as
    // one product with G1 transposed; then z1_bar = zq1 + b1 - eta * that, x2_bar = gelu(z1_bar)
    uint32_t bg1[HT][N][2];
  #pragma unroll
    for (int nt = 0; nt < HT; ++nt)
  #pragma unroll
      for (int e = 0; e < 4; ++e) g1[nt][e] *= gp[nt][e];
    scaled_transposed_b<TS>(bg1, g1, 1.f);
    uint32_t aa[N][4];
    row_sums_a<TS>(aa, a1);
    float s1[HT][4] = {}, xb[HT][2];
  #pragma unroll
    for (int nt = 0; nt < HT; ++nt) {
      mma<TS>(s1[nt], aa, bg1[nt]);
  #pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = hw0 + 8 * nt + 2 * c + e;
        xb[nt][e] = gelu<Cfg::FAST>(zqs[col] + b1s[col] - tok.eta * s1[nt][e]);
      }
    }
    // ---- partial x2_bar W2 (x2_bar as row 0 of an A tile) and partial x2_bar . x2_j (x2_bar as
    // column 0 of a B tile: the same registers)
    float xw[NT][4] = {}, xx[4] = {};
  #pragma unroll
    for (int s = 0; s < HS; ++s) {
      uint32_t xba[N][4], xbb[N][2], lo[N], hi[N];
      pack<TS>(lo, g == 0 ? xb[2 * s][0] : 0.f, g == 0 ? xb[2 * s][1] : 0.f);
      pack<TS>(hi, g == 0 ? xb[2 * s + 1][0] : 0.f, g == 0 ? xb[2 * s + 1][1] : 0.f);
  #pragma unroll
      for (int n = 0; n < N; ++n) {
        xba[n][0] = lo[n]; xba[n][1] = 0u; xba[n][2] = hi[n]; xba[n][3] = 0u;
        xbb[n][0] = lo[n]; xbb[n][1] = hi[n];
      }
      mma<TS>(xx, xa[s], xbb);
      mma_w_rows<TS, NT / 2, Cfg::W2_PART, Cfg::W2_ROW>(xw, xba, sW2, hw0 + 16 * s, lane);
    }
    float* my = red2 + warp * Cfg::RED2;
    if (g == 0) {
  #pragma unroll
      for (int nt = 0; nt < NT; ++nt) st2(my + 8 * nt + 2 * c, xw[nt][0], xw[nt][1]);
    }
    if (c == 0) {  // column 0 of the product: rows g and g + 8
      my[F + g] = xx[0];
      my[F + g + 8] = xx[2];
    }
    if (Cfg::PERSIST && last) cp_async_wait<0>();  // W1's rows, for the update
    if constexpr (CS > 1) cg::this_cluster().sync(); else __syncthreads();
    prefetch_w1_rows(0);  // the partial sums in those rows are read
    if constexpr (Cfg::PERSIST) {  // every warp is done with W2's tile unless the update follows
      if (prefetch) load_weight_tile<TS, FHC, F, F, 128>(smem + Cfg::OFF_W2, w2_of(bh + step), tid);
      cp_async_commit();
    }

    if (rank == 0 && warp == 0) {
      // z2_bar = x2_bar W2 + b2 - eta sum_j (x2_bar.x2_j + 1) G2_j, out = q + LN(z2_bar)
      float xwt[NT][2] = {}, e[4] = {1.f, 1.f, 1.f, 1.f};  // x2_bar.x2_j + 1 at j = 2c, 2c + 1, 2c + 8, 2c + 9
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
          const float2 lo = *reinterpret_cast<const float2*>(src + w * Cfg::RED2 + F + 2 * c);
          const float2 hi = *reinterpret_cast<const float2*>(src + w * Cfg::RED2 + F + 8 + 2 * c);
          e[0] += lo.x; e[1] += lo.y; e[2] += hi.x; e[3] += hi.y;
        }
      }
      // sum_j (x2_bar.x2_j + 1) G2_j (rows 0-7) and sum_j G2_j (rows 8-15, b2's update), G2 from its tile
      uint32_t ae[N][4];
      row_sums_a<TS>(ae, e);
      float s2[NT][4] = {};
      mma_w_rows<TS, NT / 2, Cfg::G_PART, Cfg::G_ROW>(s2, ae, sG2, 0, lane);
  #pragma unroll
      for (int nt = 0; nt < NT; ++nt)
  #pragma unroll
        for (int k = 0; k < 2; ++k) xwt[nt][k] += b2s[8 * nt + 2 * c + k] - tok.eta * s2[nt][k];
      write_output<F, TA>(xwt, gamma, beta, qv, static_cast<TA*>(P.out) + bh * F, g, c);
      if (last) {
  #pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int col = 8 * nt + 2 * c;
          if ((nt & 7) == g) st2(b2 + col, b2s[col] - tok.eta * s2[nt][2], b2s[col + 1] - tok.eta * s2[nt][3]);
        }
      } else {
        append_cache_row<Cfg::RAW_ROW, TA>(P, bh, F, tok, sk, sv, lane);
      }
    }

    if (last) {
      // b1 -= eta sum_j G1_j (this warp's slice)
  #pragma unroll
      for (int nt = 0; nt < HT; ++nt) {
        const int col = hw0 + 8 * nt + 2 * c;
        if (g == 0) st2(b1 + hc0 + col, b1s[col] - tok.eta * s1[nt][2], b1s[col + 1] - tok.eta * s1[nt][3]);
      }
      // W1[:, slice] -= eta K^T G1. With PERSIST in place in the tiles (W2's too), stored below in
      // 16-byte rows; else from and to global memory (W1 from L2: the partial sums overwrote its tile)
  #pragma unroll
      for (int mt = 0; mt < KS; ++mt) {
        uint32_t ka[N][4];
        ldsm4_t<N, Cfg::KD_PART>(ka, sKd + swz<Cfg::KD_ROW>((lane >> 4) * 8 + (lane & 7), 2 * mt + ((lane >> 3) & 1)));
        TS* r0 = W1 + (16 * mt + g) * FH + hc0 + hw0 + 2 * c;
        TS* r1 = r0 + 8 * FH;
  #pragma unroll
        for (int nt = 0; nt < HT; ++nt) {
          TS *p0 = r0 + 8 * nt, *p1 = r1 + 8 * nt;
          if constexpr (Cfg::PERSIST) {
            const int col = hw0 + 8 * nt + 2 * c;
            p0 = reinterpret_cast<TS*>(smem + swz_el<Cfg::W1_ROW, 2>(16 * mt + g, col));
            p1 = reinterpret_cast<TS*>(smem + swz_el<Cfg::W1_ROW, 2>(16 * mt + g + 8, col));
          }
          float d[4] = {};
          mma<TS>(d, ka, bg1[nt]);
          update2(p0, ld2(p0), d[0], d[1], tok.eta);
          update2(p1, ld2(p1), d[2], d[3], tok.eta);
        }
      }
      // W2[slice, :] -= eta X2^T G2: X2^T's A fragments are X2's, each 8x8 block transposed; G2's
      // B fragments from its tile
      uint32_t bg2[NT][N][2];
  #pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t r[N][4];
        ldsm4_t<N, Cfg::G_PART>(r, sG2 + swz<Cfg::G_ROW>((lane & 7) + ((lane >> 3) & 1) * 8, 2 * np + (lane >> 4)));
        b_halves(r, bg2[2 * np], bg2[2 * np + 1]);
      }
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
        TS* r0 = W2 + static_cast<int64_t>(l0) * F + 2 * c;
        TS* r1 = r0 + 8 * F;
  #pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          TS *w0 = r0 + 8 * nt, *w1 = r1 + 8 * nt;  // read from here
          if constexpr (N == 1) {  // W2's tile is intact and exact for 16-bit states
            w0 = reinterpret_cast<TS*>(smem + Cfg::OFF_W2 + swz_el<Cfg::W2_ROW, 2>(l0, 8 * nt + 2 * c));
            w1 = reinterpret_cast<TS*>(smem + Cfg::OFF_W2 + swz_el<Cfg::W2_ROW, 2>(l1, 8 * nt + 2 * c));
          }
          TS *p0 = Cfg::PERSIST ? w0 : r0 + 8 * nt, *p1 = Cfg::PERSIST ? w1 : r1 + 8 * nt;  // updated here
          float d[4] = {};
          mma<TS>(d, xt, bg2[nt]);
          update2(p0, ld2(w0), d[0], d[1], tok.eta);
          update2(p1, ld2(w1), d[2], d[3], tok.eta);
        }
      }
      if constexpr (Cfg::PERSIST) {  // the updated tiles to global memory
        __syncthreads();
        store_weight_tile<F, FHC, 128>(W1, smem, tid);
        store_weight_tile<FHC, F, 128>(W2, smem + Cfg::OFF_W2, tid);
      }
    }
    if constexpr (CS > 1) cg::this_cluster().sync();  // no CTA leaves while others may read its shared memory
    if constexpr (Cfg::PERSIST) __syncthreads();      // the next head's rows, W2 and vectors overwrite these
    prefetched = prefetch;
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
