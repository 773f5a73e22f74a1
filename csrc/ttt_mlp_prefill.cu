// TTT-MLP (inner net mlp_2) prefill in the dual form: whole prompts, one launch per layer.
//
// Semantics are those of ttt_kernels/ops/ttt_mlp/chunk.py (same windows, starts mid-mini-batch,
// ragged lengths, end state). One CTA of 4 warps per (sequence, head) walks its prompt one
// mini-batch ("window") of K = 16 rows at a time; per window, at the window's start weights,
//   Z1 = Kx W1 + b1, X2 = gelu(Z1), G2 = lr * ln_l2_grad(X2 W2 + b2, V - Kx), G1 = (G2 W2^T) gelu'(Z1),
//   X2b = gelu(Q W1 + b1 - A1 G1), out = Q + LN(X2b W2 + b2 - A2 G2),
//   A1 = tril(eta_i (Q Kx^T + 1)), A2 = tril(eta_i (X2b X2^T + 1)),
//   W1 -= eta_{K-1} Kx^T G1, W2 -= eta_{K-1} X2^T G2 (and the biases), rounded to the state dtype.
// W1 and W2 stay in shared memory from the first window to the last (64 KB: f = 64 with a 16-bit
// state; the Triton kernel covers the other shapes), so a window reads nothing from HBM but its
// rows. The Triton kernel holds them in registers instead, which takes 255 registers per thread
// and one program per SM; here two CTAs share an SM. Each warp owns 64 of the 256 hidden columns,
// its slices of W1, b1 and W2, as in the decode kernel: the two sums over the hidden dim (X2 W2,
// then X2b W2 with X2b X2^T) go through shared memory, and each warp's weight update touches only
// its own slices, so it needs no barrier. The next window's rows arrive by cp.async meanwhile.
#include <algorithm>

#include "ttt_decode_dual.cuh"

namespace ttt {
namespace {

template <class TA, class TS>
struct PrefillCfg {
  static constexpr int F = 64, FH = 4 * F, WARPS = 4, HW = FH / WARPS;  // hidden columns per warp
  static constexpr int NT = F / 8, KS = F / 16, HT = HW / 8, HS = HW / 16;
  static constexpr int XT = NT + 2;  // C tiles of the second sum: X2b W2 [16 x F] and X2b X2^T [16 x 16]
  static constexpr bool CONVERT = !std::is_same<TA, TS>::value;  // q, k rows -> dot-operand tiles
  static constexpr int W1_ROW = 2 * FH, W2_ROW = 2 * F, DOT_ROW = 2 * F, RAW_ROW = F * sizeof(TA);
  static constexpr int RAW = ROWS * RAW_ROW, DOT = ROWS * DOT_ROW;
  static constexpr int OFF_W2 = F * W1_ROW, OFF_ROWS = OFF_W2 + FH * W2_ROW;  // rows: 2 buffers x {q, k, v}
  static constexpr int OFF_DOT = OFF_ROWS + 2 * 3 * RAW;
  static constexpr int OFF_RED = OFF_DOT + (CONVERT ? 2 * DOT : 0);  // [WARPS][XT][32] float4 partials
  static constexpr int OFF_SUM = OFF_RED + WARPS * XT * 32 * 16;     // [XT][32] float4 sums
  static constexpr int OFF_VEC = OFF_SUM + XT * 32 * 16;             // gamma, beta [F], lr [2][ROWS]
  static constexpr int SMEM = OFF_VEC + 4 * (2 * F + 2 * ROWS);
  static_assert(Dot<TS>::N == 1, "16-bit states only: W1 and W2 must fit in 64 KB");
};

// Sum of the WARPS warps' partial C tiles x: each warp stores its own, warp w adds up tiles
// w, w + WARPS, ..., then every warp reads all sums. Two barriers; afterwards `red` is free for
// the next sum, and `sum` once every warp has passed the next sum's first barrier.
template <int T, int WARPS>
__device__ __forceinline__ void cta_sum(float (&x)[T][4], float4* red, float4* sum, int warp, int lane) {
#pragma unroll
  for (int t = 0; t < T; ++t) red[(warp * T + t) * 32 + lane] = make_float4(x[t][0], x[t][1], x[t][2], x[t][3]);
  __syncthreads();
#pragma unroll
  for (int t = warp; t < T; t += WARPS) {
    float4 s = red[t * 32 + lane];
#pragma unroll
    for (int w = 1; w < WARPS; ++w) {
      const float4 y = red[(w * T + t) * 32 + lane];
      s.x += y.x; s.y += y.y; s.z += y.z; s.w += y.w;
    }
    sum[t * 32 + lane] = s;
  }
  __syncthreads();
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float4 s = sum[t * 32 + lane];
    x[t][0] = s.x; x[t][1] = s.y; x[t][2] = s.z; x[t][3] = s.w;
  }
}

// -tril(eta_i (S_ij + 1)) from S's two C tiles [16 x 16] as the A fragment of a product over j
// (the dual form's causal correction; rows i = g, g + 8 carry eta0, eta1)
template <class TS>
__device__ __forceinline__ void causal_a(uint32_t (&a)[1][4], const float (&s)[2][4], float eta0, float eta1, int g,
                                         int c) {
  float x[2][4];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = g + (e & 2) * 4, j = 8 * nt + 2 * c + (e & 1);
      x[nt][e] = j <= i ? -((e & 2) ? eta1 : eta0) * (s[nt][e] + 1.f) : 0.f;
    }
  uint32_t p[4][1];
  pack<TS>(p[0], x[0][0], x[0][1]);
  pack<TS>(p[1], x[0][2], x[0][3]);
  pack<TS>(p[2], x[1][0], x[1][1]);
  pack<TS>(p[3], x[1][2], x[1][3]);
  a[0][0] = p[0][0]; a[0][1] = p[1][0]; a[0][2] = p[2][0]; a[0][3] = p[3][0];
}

// C tiles [16 x 8 NT] (rows = the window) as the A fragments of a product over their columns
template <class TS, int NT>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[NT / 2][1][4], const float (&x)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    uint32_t p0[1], p1[1];
    pack<TS>(p0, x[nt][0], x[nt][1]);
    pack<TS>(p1, x[nt][2], x[nt][3]);
    a[nt / 2][0][(nt & 1) * 2] = p0[0];
    a[nt / 2][0][(nt & 1) * 2 + 1] = p1[0];
  }
}

// Two n-tiles of 16-bit weights held as C fragments (ldmatrix order: tile 0 rows g, g + 8, then
// tile 1) plus a b0 and a b1, in fp32 and rounded back: the rank-16 updates in shared memory
template <class TS>
__device__ __forceinline__ void mma_into(uint32_t (&w)[4], const uint32_t (&a)[1][4], const uint32_t (&b0)[1][2],
                                         const uint32_t (&b1)[1][2]) {
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    uint32_t lo[1] = {w[2 * t]}, hi[1] = {w[2 * t + 1]};
    const float2 x0 = unpack<TS>(lo), x1 = unpack<TS>(hi);
    float acc[4] = {x0.x, x0.y, x1.x, x1.y};
    mma<TS>(acc, a, t ? b1 : b0);
    pack<TS>(lo, acc[0], acc[1]);
    pack<TS>(hi, acc[2], acc[3]);
    w[2 * t] = lo[0];
    w[2 * t + 1] = hi[0];
  }
}

// x rounded to the state dtype (the biases live in registers between windows)
template <class TS>
__device__ __forceinline__ float2 round_to(float x, float y) {
  uint32_t p[1];
  pack<TS>(p, x, y);
  return unpack<TS>(p);
}

template <class TA, class TS>
__global__ void __launch_bounds__(128, 2) ttt_mlp_prefill_kernel(const TTTPrefillParams P) {
  using Cfg = PrefillCfg<TA, TS>;
  constexpr int F = Cfg::F, FH = Cfg::FH, NT = Cfg::NT, KS = Cfg::KS, HT = Cfg::HT, HS = Cfg::HS, K = ROWS;
  constexpr int RAW_ROW = Cfg::RAW_ROW, RAW = Cfg::RAW, W1_ROW = Cfg::W1_ROW, W2_ROW = Cfg::W2_ROW;
  constexpr int DOT_ROW = Cfg::DOT_ROW, CH = RAW_ROW / 16, EPC = 16 / sizeof(TA);
  extern __shared__ __align__(128) char smem[];
  const TTTDecodeParams& D = P.d;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3, hw0 = warp * Cfg::HW;
  const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8;  // the row of a 16x16 block this lane addresses in ldmatrix
  const int64_t bh = blockIdx.x, b = bh / D.H, h = bh % D.H;
  const int t0 = static_cast<int>(load_pos(D.pos, D.pos_dtype, b) & (K - 1));
  const int n = static_cast<int>(load_pos(P.lengths, P.len_dtype, b));
  const int n_win = (t0 + n + K - 1) / K;
  if (n_win == 0) return;

  TS* W1 = static_cast<TS*>(D.w[0]) + bh * F * FH;
  TS* b1 = static_cast<TS*>(D.w[1]) + bh * FH;
  TS* W2 = static_cast<TS*>(D.w[2]) + bh * FH * F;
  TS* b2 = static_cast<TS*>(D.w[3]) + bh * F;
  const TA* kc = static_cast<const TA*>(D.k_cache) + bh * K * F;
  const TA* vc = static_cast<const TA*>(D.v_cache) + bh * K * F;
  float* vec = reinterpret_cast<float*>(smem + Cfg::OFF_VEC);
  float *gamma = vec, *beta = vec + F, *lrs = vec + 2 * F;
  float4* red = reinterpret_cast<float4*>(smem + Cfg::OFF_RED);
  float4* sum = reinterpret_cast<float4*>(smem + Cfg::OFF_SUM);
  const uint32_t sW1 = smem_u32(smem), sW2 = smem_u32(smem + Cfg::OFF_W2);

  // window w's q, k, v rows into row buffer w % 2: prompt token s = w K + r - t0 at row r, the
  // mini-batch cache's rows for s < 0 (k, v; q is never needed there), zeros past the prompt
  const auto load_rows = [&](int w) {
    const uint32_t sq = smem_u32(smem + Cfg::OFF_ROWS + (w & 1) * 3 * RAW), sk = sq + RAW, sv = sk + RAW;
    for (int i = tid; i < ROWS * CH; i += 128) {
      const int r = i / CH, ch = i % CH, s = w * K + r - t0;
      const bool in = s >= 0 && s < n;
      const TA* q = in ? static_cast<const TA*>(D.q) + b * P.sq_b + s * P.sq_t + h * F : kc;
      const TA* k = in ? static_cast<const TA*>(D.k) + b * P.sk_b + s * P.sk_t + h * F : kc + r * F;
      const TA* v = in ? static_cast<const TA*>(D.v) + b * P.sv_b + s * P.sv_t + h * F : vc + r * F;
      cp_async16(sq + swz<RAW_ROW>(r, ch), q + ch * EPC, in);
      cp_async16(sk + swz<RAW_ROW>(r, ch), k + ch * EPC, in || s < 0);
      cp_async16(sv + swz<RAW_ROW>(r, ch), v + ch * EPC, in || s < 0);
    }
  };
  const auto row_lr = [&](int w) {  // lr of window w's row tid (< ROWS)
    const int s = w * K + tid - t0;
    if (s < 0) return D.lr_cache[bh * K + tid];
    return s < n ? load_any(D.lr, D.lr_dtype, (b * P.T + s) * D.H + h) : 0.f;
  };

  load_weight_tile<TS, F, FH, FH, 128>(smem, W1, tid);
  load_weight_tile<TS, FH, F, F, 128>(smem + Cfg::OFF_W2, W2, tid);
  load_rows(0);
  cp_async_commit();
  for (int i = tid; i < F; i += 128) {
    gamma[i] = load_any(D.ln_w, D.ln_w_dtype, h * F + i);
    beta[i] = load_any(D.ln_b, D.ln_b_dtype, h * F + i);
  }
  // b1 (this warp's slice) and b2 in registers, at the columns of this thread's C fragments
  float b1r[HT][2], b2r[NT][2];
#pragma unroll
  for (int nt = 0; nt < HT; ++nt) {
    const float2 x = ld2(b1 + hw0 + 8 * nt + 2 * c);
    b1r[nt][0] = x.x; b1r[nt][1] = x.y;
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const float2 x = ld2(b2 + 8 * nt + 2 * c);
    b2r[nt][0] = x.x; b2r[nt][1] = x.y;
  }
  const auto eta_of = [&](int t) {
    return fmaxf(1.f / static_cast<float>(t + 1) + load_any(D.tib, D.tib_dtype, t), 0.f);
  };
  const float eta0 = eta_of(g), eta1 = eta_of(g + 8), eta_upd = eta_of(K - 1);
  float lr_next = tid < ROWS ? row_lr(0) : 0.f;
  bool moved = false;  // a window ended inside the prompt: the weights changed

  for (int w = 0; w < n_win; ++w) {
    if (tid < ROWS) lrs[(w & 1) * ROWS + tid] = lr_next;
    cp_async_wait<0>();
    __syncthreads();  // window w's rows are in (at w = 0 the weights too); every warp is past window w - 1
    if (w + 1 < n_win) load_rows(w + 1);
    cp_async_commit();
    if (tid < ROWS && w + 1 < n_win) lr_next = row_lr(w + 1);
    const char* sq = smem + Cfg::OFF_ROWS + (w & 1) * 3 * RAW;
    const char *sk = sq + RAW, *sv = sk + RAW;
    uint32_t sQd = smem_u32(sq), sKd = smem_u32(sk);
    if constexpr (Cfg::CONVERT) {
      convert_rows<TA, TS, F, 128>(smem + Cfg::OFF_DOT, sq, tid);
      convert_rows<TA, TS, F, 128>(smem + Cfg::OFF_DOT + Cfg::DOT, sk, tid);
      __syncthreads();
      sQd = smem_u32(smem + Cfg::OFF_DOT);
      sKd = sQd + Cfg::DOT;
    }
    const float lr0 = lrs[(w & 1) * ROWS + g], lr1 = lrs[(w & 1) * ROWS + g + 8];

    // ---- Z1 = Kx W1, ZQ1 = Q W1 (this warp's hidden slice) from the same W1 fragments; S1 = Q Kx^T
    float z1[HT][4] = {}, zq[HT][4] = {}, s1[2][4] = {};
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t qa[1][4], ka[1][4];
      ldsm4<1, 0>(qa, sQd + swz<DOT_ROW>(lane & 15, 2 * ks + (lane >> 4)));
      ldsm4<1, 0>(ka, sKd + swz<DOT_ROW>(lane & 15, 2 * ks + (lane >> 4)));
      // Kx^T as a B operand: its n-tiles are Kx's rows 0-7 and 8-15, i.e. Kx's A registers
      const uint32_t kb0[1][2] = {{ka[0][0], ka[0][2]}}, kb1[1][2] = {{ka[0][1], ka[0][3]}};
      mma<TS>(s1[0], qa, kb0);
      mma<TS>(s1[1], qa, kb1);
#pragma unroll
      for (int np = 0; np < HS; ++np) {
        uint32_t r[1][4], w0[1][2], w1[1][2];
        ldsm4_t<1, 0>(r, sW1 + swz<W1_ROW>(16 * ks + lrow, hw0 / 8 + 2 * np + (lane >> 4)));
        b_halves(r, w0, w1);
        mma<TS>(z1[2 * np], ka, w0);
        mma<TS>(z1[2 * np + 1], ka, w1);
        mma<TS>(zq[2 * np], qa, w0);
        mma<TS>(zq[2 * np + 1], qa, w1);
      }
    }
    // X2 = gelu(Z1 + b1) as A fragments over the hidden slice, gelu'(Z1) kept for G1
    float gp[HT][4];
#pragma unroll
    for (int nt = 0; nt < HT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        z1[nt][e] = gelu<true>(z1[nt][e] + b1r[nt][e & 1], &gp[nt][e]);
        zq[nt][e] += b1r[nt][e & 1];
      }
    uint32_t xa[HS][1][4];
    c_to_a<TS, HT>(xa, z1);

    // ---- Z2 = X2 W2 + b2, summed over the warps' slices; G2 = lr * ln_l2_grad(Z2, V - Kx)
    float z2[NT][4] = {};
#pragma unroll
    for (int s = 0; s < HS; ++s) mma_w_rows<TS, NT / 2, 0, W2_ROW>(z2, xa[s], sW2, hw0 + 16 * s, lane);
    cta_sum<NT, Cfg::WARPS>(z2, red, sum, warp, lane);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) z2[nt][e] += b2r[nt][e & 1];
    ln_l2_grad_rows<F, TA>(z2, gamma, beta, sk, sv, g, c, lr0, lr1);  // z2 is now G2

    // ---- G1 = (G2 W2^T) * gelu'(Z1) for this warp's slice
    uint32_t ga[KS][1][4];
    c_to_a<TS, NT>(ga, z2);
    float g1[HT][4] = {};
#pragma unroll
    for (int s = 0; s < KS; ++s)
#pragma unroll
      for (int np = 0; np < HS; ++np) {
        uint32_t r[1][4], w0[1][2], w1[1][2];
        ldsm4<1, 0>(r, sW2 + swz<W2_ROW>(hw0 + 16 * np + (lane & 7) + (lane >> 4) * 8, 2 * s + ((lane >> 3) & 1)));
        b_halves(r, w0, w1);
        mma<TS>(g1[2 * np], ga[s], w0);
        mma<TS>(g1[2 * np + 1], ga[s], w1);
      }
#pragma unroll
    for (int nt = 0; nt < HT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) g1[nt][e] *= gp[nt][e];

    // ---- X2b = gelu(ZQ1 + b1 - A1 G1)
    {
      uint32_t a1[1][4], bg[HT][1][2];
      causal_a<TS>(a1, s1, eta0, eta1, g, c);
      scaled_transposed_b<TS, HT>(bg, g1, 1.f);
#pragma unroll
      for (int nt = 0; nt < HT; ++nt) mma<TS>(zq[nt], a1, bg[nt]);
    }
#pragma unroll
    for (int nt = 0; nt < HT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) zq[nt][e] = gelu<true>(zq[nt][e]);
    uint32_t xba[HS][1][4];
    c_to_a<TS, HT>(xba, zq);

    // ---- X2b W2 and X2b X2^T, summed over the warps' slices (X2^T's B operand: X2's A registers)
    float acc[Cfg::XT][4] = {};
    auto& xw = reinterpret_cast<float(&)[NT][4]>(acc[0]);
    auto& xx = reinterpret_cast<float(&)[2][4]>(acc[NT]);
#pragma unroll
    for (int s = 0; s < HS; ++s) {
      mma_w_rows<TS, NT / 2, 0, W2_ROW>(xw, xba[s], sW2, hw0 + 16 * s, lane);
      const uint32_t x0[1][2] = {{xa[s][0][0], xa[s][0][2]}}, x1[1][2] = {{xa[s][0][1], xa[s][0][3]}};
      mma<TS>(xx[0], xba[s], x0);
      mma<TS>(xx[1], xba[s], x1);
    }
    cta_sum<Cfg::XT, Cfg::WARPS>(acc, red, sum, warp, lane);

    // ---- out = Q + LN(X2b W2 + b2 - A2 G2): every warp forms all rows, warp w stores n-tiles w, w + 4
    {
      uint32_t a2[1][4], bg[NT][1][2];
      causal_a<TS>(a2, xx, eta0, eta1, g, c);
      scaled_transposed_b<TS, NT>(bg, z2, 1.f);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) xw[nt][e] += b2r[nt][e & 1];
        mma<TS>(xw[nt], a2, bg[nt]);
      }
    }
    float m0 = 0.f, m1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      m0 += xw[nt][0] + xw[nt][1];
      m1 += xw[nt][2] + xw[nt][3];
    }
    m0 = quad_sum(m0) * (1.f / F);
    m1 = quad_sum(m1) * (1.f / F);
    float v0 = 0.f, v1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      xw[nt][0] -= m0; xw[nt][1] -= m0; xw[nt][2] -= m1; xw[nt][3] -= m1;
      v0 += xw[nt][0] * xw[nt][0] + xw[nt][1] * xw[nt][1];
      v1 += xw[nt][2] * xw[nt][2] + xw[nt][3] * xw[nt][3];
    }
    const float r0 = rsqrtf(quad_sum(v0) * (1.f / F) + LN_EPS), r1 = rsqrtf(quad_sum(v1) * (1.f / F) + LN_EPS);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = g + 8 * half, s = w * K + row - t0;
      if (s < 0 || s >= n) continue;
      TA* out = static_cast<TA*>(D.out) + ((b * P.T + s) * D.H + h) * F;
      const float rr = half ? r1 : r0;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        if (nt % Cfg::WARPS != warp) continue;  // constant indices: xw stays in registers
        const int col = 8 * nt + 2 * c;
        const float2 q = ld2(reinterpret_cast<const TA*>(sq + swz_el<RAW_ROW, sizeof(TA)>(row, col)));
        st2(out + col, q.x + gamma[col] * xw[nt][2 * half] * rr + beta[col],
            q.y + gamma[col + 1] * xw[nt][2 * half + 1] * rr + beta[col + 1]);
      }
    }

    if (w * K + K - t0 <= n) {  // the window ends inside the prompt: the weights move
      moved = true;
      // W1[:, slice] -= eta Kx^T G1 in place (A: Kx^T by ldmatrix.trans; B: G1's C tiles transposed)
      uint32_t bg[HT][1][2];
      scaled_transposed_b<TS, HT>(bg, g1, -eta_upd);
#pragma unroll
      for (int mt = 0; mt < KS; ++mt) {
        uint32_t kt[1][4];
        ldsm4_t<1, 0>(kt, sKd + swz<DOT_ROW>((lane >> 4) * 8 + (lane & 7), 2 * mt + ((lane >> 3) & 1)));
#pragma unroll
        for (int np = 0; np < HT / 2; ++np) {
          const uint32_t at =
              sW1 + swz<W1_ROW>(16 * mt + lrow, hw0 / 8 + 2 * np + (lane >> 4));
          uint32_t wr[4];
          ldsm4(wr, at);
          mma_into<TS>(wr, kt, bg[2 * np], bg[2 * np + 1]);
          stsm4(at, wr);
        }
      }
      // W2[slice, :] -= eta X2^T G2 (A: X2's A fragments, each 8x8 block transposed)
      uint32_t bq[NT][1][2];
      scaled_transposed_b<TS, NT>(bq, z2, -eta_upd);
#pragma unroll
      for (int s = 0; s < HS; ++s) {
        const uint32_t xt[1][4] = {{movt(xa[s][0][0]), movt(xa[s][0][2]), movt(xa[s][0][1]), movt(xa[s][0][3])}};
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          const uint32_t at = sW2 + swz<W2_ROW>(hw0 + 16 * s + lrow, 2 * np + (lane >> 4));
          uint32_t wr[4];
          ldsm4(wr, at);
          mma_into<TS>(wr, xt, bq[2 * np], bq[2 * np + 1]);
          stsm4(at, wr);
        }
      }
#pragma unroll
      for (int nt = 0; nt < HT; ++nt) {
        const float2 x = round_to<TS>(b1r[nt][0] - eta_upd * col_sum(g1[nt][0] + g1[nt][2]),
                                      b1r[nt][1] - eta_upd * col_sum(g1[nt][1] + g1[nt][3]));
        b1r[nt][0] = x.x; b1r[nt][1] = x.y;
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float2 x = round_to<TS>(b2r[nt][0] - eta_upd * col_sum(z2[nt][0] + z2[nt][2]),
                                      b2r[nt][1] - eta_upd * col_sum(z2[nt][1] + z2[nt][3]));
        b2r[nt][0] = x.x; b2r[nt][1] = x.y;
      }
    } else if (w == n_win - 1) {
      // the prompt ends inside this window: its rows so far are the mini-batch cache
      const int t_end = (t0 + n) % K;
      for (int i = tid; i < t_end * 2 * CH; i += 128) {
        const int r = i / (2 * CH), j = i % (2 * CH), isv = j >= CH, ch = j % CH;
        const uint4 x = *reinterpret_cast<const uint4*>((isv ? sv : sk) + swz<RAW_ROW>(r, ch));
        *reinterpret_cast<uint4*>(static_cast<TA*>(isv ? D.v_cache : D.k_cache) + (bh * K + r) * F + ch * EPC) = x;
      }
      if (tid < t_end) D.lr_cache[bh * K + tid] = lrs[(w & 1) * ROWS + tid];
    }
  }

  if (!moved) return;
  if (g == 0) {
#pragma unroll
    for (int nt = 0; nt < HT; ++nt) st2(b1 + hw0 + 8 * nt + 2 * c, b1r[nt][0], b1r[nt][1]);
    if (warp == 0) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) st2(b2 + 8 * nt + 2 * c, b2r[nt][0], b2r[nt][1]);
    }
  }
  __syncthreads();  // every warp's slices are final
  store_weight_tile<F, FH, 128>(W1, smem, tid);
  store_weight_tile<FH, F, 128>(W2, smem + Cfg::OFF_W2, tid);
}

template <class TA, class TS>
const char* launch_prefill(const TTTPrefillParams& p, cudaStream_t stream) {
  using Cfg = PrefillCfg<TA, TS>;
  constexpr auto kernel = ttt_mlp_prefill_kernel<TA, TS>;
  cudaError_t err = allow_smem<kernel>(Cfg::SMEM);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t blocks = static_cast<int64_t>(p.d.B) * p.d.H;
  if (blocks > 0x7fffffff) return "too many (sequence, head) pairs for one launch";
  kernel<<<static_cast<unsigned>(blocks), 128, Cfg::SMEM, stream>>>(p);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace
}  // namespace ttt

extern "C" const char* ttt_mlp_prefill_launch(const TTTPrefillParams* p, cudaStream_t stream) {
  const TTTDecodeParams& d = p->d;
  if (d.F != 64 || d.K != ttt::ROWS) return "the CUDA prefill kernel supports head dim 64 and mini-batch 16";
  if (d.B * static_cast<int64_t>(d.H) == 0) return nullptr;
  if (d.state_dtype == TTT_F32) return "the CUDA prefill kernel supports float16 and bfloat16 states";
  return ttt::dispatch_dtype(d.act_dtype, [&](auto ta) {
    return ttt::dispatch_dtype(d.state_dtype, [&](auto ts) -> const char* {
      if constexpr (std::is_same<decltype(ts), float>::value) return "unreachable";
      else return ttt::launch_prefill<decltype(ta), decltype(ts)>(*p, stream);
    });
  });
}
