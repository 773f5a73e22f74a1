// Device building blocks shared by the dual-form TTT decode kernels (sm_90).
//
// Matrix products run on the tensor cores with mma.sync.m16n8k16 (fp32 accumulate); the
// 16 mini-batch rows are the M dimension. Fragment layouts (g = lane / 4, c = lane % 4):
//   A 16x16: {A[g][2c..2c+1], A[g+8][2c..], A[g][2c+8..], A[g+8][2c+8..]}
//   B 16x8 : {B[2c..2c+1][g], B[2c+8..2c+9][g]}
//   C 16x8 : {C[g][2c], C[g][2c+1], C[g+8][2c], C[g+8][2c+1]}
// so a thread holds two rows (g, g+8) of every output tile and a row's reductions are
// two quad shuffles. Operands stored in shared memory are read with ldmatrix from
// tiles whose 16-byte chunks are XOR-swizzled by row, so the 8 rows of one 8x8 matrix
// fall in different banks.
//
// fp32 states: the tensor cores have no exact fp32 product, so each fp32 operand is split
// into bf16 hi + lo parts and a product is hi*hi + hi*lo + lo*hi (three mma), ~1e-5
// relative error instead of tf32's ~1e-3.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <atomic>
#include <type_traits>

#include "ttt_decode_dual.h"

namespace ttt {

constexpr unsigned FULL = 0xffffffffu;
constexpr float LN_EPS = 1e-6f;
constexpr int ROWS = 16;  // mini-batch rows per tile: K <= 16

// ---------------------------------------------------------------- scalars and pairs

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(double x) { return static_cast<float>(x); }

// small per-call inputs (lr, LayerNorm params, token-index bias) come in any float dtype
__device__ __forceinline__ float load_any(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case TTT_F16: return __half2float(static_cast<const __half*>(p)[i]);
    case TTT_BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case TTT_F64: return static_cast<float>(static_cast<const double*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// elements tid, tid + NT, ... (< LEN) of p as fp32; straight-line predicated loads, so all of
// them are in flight before the first is used
template <class T, int LEN, int NT>
__device__ __forceinline__ void load_f32(float (&out)[(LEN + NT - 1) / NT], const T* p, int tid) {
#pragma unroll
  for (int k = 0; k < (LEN + NT - 1) / NT; ++k) {
    const int i = tid + k * NT;
    out[k] = i < LEN ? to_f32(p[i]) : 0.f;
  }
}

__device__ __forceinline__ int64_t load_pos(const void* p, int dtype, int64_t i) {
  return dtype == TTT_I32 ? static_cast<int64_t>(static_cast<const int32_t*>(p)[i])
                          : static_cast<const int64_t*>(p)[i];
}

// two consecutive elements (2-element aligned), shared or global
__device__ __forceinline__ float2 ld2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 ld2(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}
__device__ __forceinline__ float2 ld2(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ void st2(float* p, float x, float y) { *reinterpret_cast<float2*>(p) = make_float2(x, y); }
__device__ __forceinline__ void st2(__half* p, float x, float y) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y);
}
__device__ __forceinline__ void st2(__nv_bfloat16* p, float x, float y) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(FULL, x, 1);
  return x + __shfl_xor_sync(FULL, x, 2);
}
// sum over the 8 quads (the 16 rows of a C tile, after each thread added its two rows)
__device__ __forceinline__ float col_sum(float x) {
  x += __shfl_xor_sync(FULL, x, 4);
  x += __shfl_xor_sync(FULL, x, 8);
  return x + __shfl_xor_sync(FULL, x, 16);
}

// the hardware's one-instruction tanh (~5e-4 relative error)
__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// Tanh-approximation gelu and its exact derivative from one tanh. FAST (16-bit states, whose
// products are 16-bit anyway) takes tanh_approx; fp32 states keep 1 - 2 / (e^2x + 1), exact to
// a few ulp and saturating cleanly (the Triton kernels make the same choice: fast_tanh()).
template <bool FAST>
__device__ __forceinline__ float gelu(float x, float* grad = nullptr) {
  const float xx = x * x, u = x * (0.7978845608028654f + 0.035677408136300125f * xx);
  const float th = FAST ? tanh_approx(u) : 1.f - __fdividef(2.f, __expf(2.f * u) + 1.f);
  if (grad) *grad = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * (0.7978845608028654f + 0.10703222440890037f * xx);
  return 0.5f * x * (1.f + th);
}

// ---------------------------------------------------------------- dot operands

// Element type of the tensor-core operands for a state dtype and the number of parts
// (2 for fp32: bf16 hi + lo).
template <class TS> struct Dot { using E = TS; static constexpr int N = 1; };
template <> struct Dot<float> { using E = __nv_bfloat16; static constexpr int N = 2; };

__device__ __forceinline__ uint32_t pack2(__half, float x, float y) {
  __half2 h = __floats2half2_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack2(__nv_bfloat16, float x, float y) {
  __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ float2 unpack2(__half, uint32_t u) {
  return __half22float2(*reinterpret_cast<__half2*>(&u));
}
__device__ __forceinline__ float2 unpack2(__nv_bfloat16, uint32_t u) {
  return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
}

// (x, y) as the N parts of a dot operand register
template <class TS>
__device__ __forceinline__ void pack(uint32_t (&d)[Dot<TS>::N], float x, float y) {
  using E = typename Dot<TS>::E;
  d[0] = pack2(E(), x, y);
  if constexpr (Dot<TS>::N == 2) {
    const float2 hi = unpack2(E(), d[0]);
    d[1] = pack2(E(), x - hi.x, y - hi.y);
  }
}
template <class TS>
__device__ __forceinline__ float2 unpack(const uint32_t (&d)[Dot<TS>::N]) {
  using E = typename Dot<TS>::E;
  float2 v = unpack2(E(), d[0]);
  if constexpr (Dot<TS>::N == 2) {
    const float2 lo = unpack2(E(), d[1]);
    v.x += lo.x;
    v.y += lo.y;
  }
  return v;
}

__device__ __forceinline__ void mma1(__half, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma1(__nv_bfloat16, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a * b over the operands' parts (small cross terms first)
template <class TS>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[Dot<TS>::N][4],
                                    const uint32_t (&b)[Dot<TS>::N][2]) {
  using E = typename Dot<TS>::E;
  if constexpr (Dot<TS>::N == 2) {
    mma1(E(), d, a[0], b[1]);
    mma1(E(), d, a[1], b[0]);
  }
  mma1(E(), d, a[0], b[0]);
}

// A 16x16 block of a weight matrix loaded by an x4 ldmatrix.trans (16 k-rows, 16 columns) as
// the B operands of its two 8-column halves.
template <int N>
__device__ __forceinline__ void b_halves(const uint32_t (&r)[N][4], uint32_t (&b0)[N][2], uint32_t (&b1)[N][2]) {
#pragma unroll
  for (int n = 0; n < N; ++n) {
    b0[n][0] = r[n][0]; b0[n][1] = r[n][1];
    b1[n][0] = r[n][2]; b1[n][1] = r[n][3];
  }
}

// The same block as the A operand of the transposed product (W^T q): the registers reordered.
template <int N>
__device__ __forceinline__ void a_transposed(const uint32_t (&r)[N][4], uint32_t (&wt)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) {
    wt[n][0] = r[n][0]; wt[n][1] = r[n][2]; wt[n][2] = r[n][1]; wt[n][3] = r[n][3];
  }
}

// transpose of an 8x8 b16 matrix held one register per thread (row g, cols 2c..2c+1)
__device__ __forceinline__ uint32_t movt(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

// The B operand of X^T (s G) from G's C fragments ([16 x 8 NT], rows = the mini-batch): the
// scaled values packed and each 8x8 block transposed in registers. The rank-16 weight updates.
template <class TS, int NT>
__device__ __forceinline__ void scaled_transposed_b(uint32_t (&bg)[NT][Dot<TS>::N][2], const float (&z)[NT][4],
                                                    float s) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    uint32_t p0[Dot<TS>::N], p1[Dot<TS>::N];
    pack<TS>(p0, s * z[nt][0], s * z[nt][1]);
    pack<TS>(p1, s * z[nt][2], s * z[nt][3]);
#pragma unroll
    for (int n = 0; n < Dot<TS>::N; ++n) {
      bg[nt][n][0] = movt(p0[n]);
      bg[nt][n][1] = movt(p1[n]);
    }
  }
}

// An A fragment whose rows 0-7 are the vector x (this thread's elements 2c, 2c + 1, 2c + 8, 2c + 9)
// and rows 8-15 ones: its product with a B tile of 16 rows gives sum_j x_j B_j in every row g and
// sum_j B_j in every row g + 8 (the row sums of the dual form and the bias updates, in one mma).
template <class TS>
__device__ __forceinline__ void row_sums_a(uint32_t (&a)[Dot<TS>::N][4], const float (&x)[4]) {
  uint32_t lo[Dot<TS>::N], hi[Dot<TS>::N], one[Dot<TS>::N];
  pack<TS>(lo, x[0], x[1]);
  pack<TS>(hi, x[2], x[3]);
  pack<TS>(one, 1.f, 1.f);
#pragma unroll
  for (int n = 0; n < Dot<TS>::N; ++n) {
    a[n][0] = lo[n]; a[n][1] = one[n]; a[n][2] = hi[n]; a[n][3] = one[n];
  }
}

// attn_j + 1 at this thread's rows of row_sums_a (j = 2c, 2c + 1, 2c + 8, 2c + 9), attn = K q from
// kw_pass: its C tile holds K q in column 0 (threads c = 0, rows g and g + 8)
__device__ __forceinline__ void attn_plus_one(float (&a)[4], const float (&at)[4], int c) {
  a[0] = __shfl_sync(FULL, at[0], 8 * c) + 1.f;
  a[1] = __shfl_sync(FULL, at[0], 8 * c + 4) + 1.f;
  a[2] = __shfl_sync(FULL, at[2], 8 * c) + 1.f;
  a[3] = __shfl_sync(FULL, at[2], 8 * c + 4) + 1.f;
}

// two weights w of a rank-16 update: w - eta d
template <class TS>
__device__ __forceinline__ void update2(TS* p, float2 w, float d0, float d1, float eta) {
  st2(p, w.x - eta * d0, w.y - eta * d1);
}

// What every launcher checks before dispatching on the head dim: ``launch(integral_constant<int, F>)``
// launches the kernel for head dim F and returns nullptr or an error message.
template <class Launch>
const char* launch_by_head_dim(const TTTDecodeParams& p, Launch&& launch) {
  if (p.K < 1 || p.K > ROWS || (p.K & (p.K - 1))) return "the mini-batch size K must be a power of two <= 16";
  if (p.B * static_cast<int64_t>(p.H) == 0) return nullptr;
  switch (p.F) {
    case 64: return launch(std::integral_constant<int, 64>());
    case 128: return launch(std::integral_constant<int, 128>());
    default: return "the CUDA kernels support head dims 64 and 128";
  }
}

// ---------------------------------------------------------------- shared memory

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// byte offset of 16-byte chunk `chunk` of row `row` in a swizzled tile (rows of ROW_BYTES)
template <int ROW_BYTES>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  static_assert(ROW_BYTES % 128 == 0, "swizzled rows must span at least 8 chunks");
  return row * ROW_BYTES + ((chunk ^ (row & 7)) << 4);
}
// byte offset of element `col` (element size ES) of row `row`
template <int ROW_BYTES, int ES>
__device__ __forceinline__ uint32_t swz_el(int row, int col) {
  const int b = col * ES;
  return swz<ROW_BYTES>(row, b >> 4) | (b & 15);
}

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
__device__ __forceinline__ void ldsm4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
// stmatrix .x4, the inverse of ldsm4: lane 8i + r gives the address of row r of matrix i
__device__ __forceinline__ void stsm4(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};" ::"r"(addr), "r"(r[0]), "r"(r[1]),
               "r"(r[2]), "r"(r[3])
               : "memory");
}
// the same x4 load from each part of a tile (parts PART bytes apart)
template <int N, int PART>
__device__ __forceinline__ void ldsm4(uint32_t (&r)[N][4], uint32_t addr) {
#pragma unroll
  for (int n = 0; n < N; ++n) ldsm4(r[n], addr + n * PART);
}
template <int N, int PART>
__device__ __forceinline__ void ldsm4_t(uint32_t (&r)[N][4], uint32_t addr) {
#pragma unroll
  for (int n = 0; n < N; ++n) ldsm4_t(r[n], addr + n * PART);
}

// 16-byte global -> shared copy that bypasses registers; zero-fills when !valid
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

__device__ __forceinline__ uint4 ld_nc16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// Calls fn(r, ch) for the chunks of an R x CH grid (row-major) that thread `tid` of NT owns:
// chunks tid, tid + NT, ... With NT a multiple of CH a thread keeps its chunk column and steps
// its row by NT / CH, so the trip count and every step's address offset are compile-time
// constants (a loop from tid with a runtime bound cost ~20 instructions of address arithmetic
// per 16-byte copy: a division, 64-bit pointer math, a remainder loop).
template <int R, int CH, int NT, class Fn>
__device__ __forceinline__ void for_chunks(int tid, Fn&& fn) {
  static_assert(NT % CH == 0, "a thread's chunks share one column");
  constexpr int RS = NT / CH, ITERS = (R + RS - 1) / RS;
  const int r0 = tid / CH, ch = tid % CH;
#pragma unroll
  for (int k = 0; k < ITERS; ++k)
    if (R % RS == 0 || r0 + k * RS < R) fn(r0 + k * RS, ch);
}

// A weight matrix block [R x C] (row stride LD elements in global memory) into a swizzled
// tile of dot elements (rows of 2*C bytes, N parts), by NT threads. 16-bit states are copied
// as they are (cp.async; the caller commits the group); fp32 states are split hi/lo through
// registers.
template <class TS, int R, int C, int LD, int NT>
__device__ __forceinline__ void load_weight_tile(char* tile, const TS* src, int tid) {
  constexpr int ROW = 2 * C, CH = C / 8, PART = R * ROW;
  if constexpr (Dot<TS>::N == 1) {
    const uint32_t base = smem_u32(tile);
    for_chunks<R, CH, NT>(tid, [&](int r, int ch) { cp_async16(base + swz<ROW>(r, ch), src + r * LD + ch * 8, true); });
  } else {
    for_chunks<R, CH, NT>(tid, [&](int r, int ch) {
      const uint4 u0 = ld_nc16(src + r * LD + ch * 8), u1 = ld_nc16(src + r * LD + ch * 8 + 4);
      const float x[8] = {__uint_as_float(u0.x), __uint_as_float(u0.y), __uint_as_float(u0.z), __uint_as_float(u0.w),
                          __uint_as_float(u1.x), __uint_as_float(u1.y), __uint_as_float(u1.z), __uint_as_float(u1.w)};
      uint32_t p[4][2];
#pragma unroll
      for (int j = 0; j < 4; ++j) pack<float>(p[j], x[2 * j], x[2 * j + 1]);
      char* dst = tile + swz<ROW>(r, ch);
      *reinterpret_cast<uint4*>(dst) = make_uint4(p[0][0], p[1][0], p[2][0], p[3][0]);
      *reinterpret_cast<uint4*>(dst + PART) = make_uint4(p[0][1], p[1][1], p[2][1], p[3][1]);
    });
  }
}

// The inverse of load_weight_tile for a 16-bit state: the swizzled tile [R x C] back to a
// contiguous block (row stride C elements), in 16-byte stores.
template <int R, int C, int NT, class TS>
__device__ __forceinline__ void store_weight_tile(TS* dst, const char* tile, int tid) {
  static_assert(Dot<TS>::N == 1, "16-bit states only");
  constexpr int ROW = 2 * C, CH = C / 8;
  for_chunks<R, CH, NT>(tid, [&](int r, int ch) {
    *reinterpret_cast<uint4*>(dst + r * C + ch * 8) = *reinterpret_cast<const uint4*>(tile + swz<ROW>(r, ch));
  });
}

// The mini-batch so far as 16 raw rows (act dtype, swizzled): cached rows j < t, the
// current token's k / v at row t, zeros below (they carry lr 0 and must stay finite).
template <class TA, int F, int NT>
__device__ __forceinline__ void load_minibatch_rows(char* sk, char* sv, const TTTDecodeParams& P, int64_t bh, int t,
                                                    int tid) {
  constexpr int ROW = F * sizeof(TA), CH = ROW / 16, EPC = 16 / sizeof(TA);
  const TA* kc = static_cast<const TA*>(P.k_cache) + bh * P.K * F;
  const TA* vc = static_cast<const TA*>(P.v_cache) + bh * P.K * F;
  const TA* kt = static_cast<const TA*>(P.k) + bh * F;
  const TA* vt = static_cast<const TA*>(P.v) + bh * F;
  const uint32_t bk = smem_u32(sk), bv = smem_u32(sv);
  for_chunks<ROWS, CH, NT>(tid, [&](int j, int ch) {
    const bool cached = j < t;
    cp_async16(bk + swz<ROW>(j, ch), (cached ? kc + j * F : kt) + ch * EPC, j <= t);
    cp_async16(bv + swz<ROW>(j, ch), (cached ? vc + j * F : vt) + ch * EPC, j <= t);
  });
}

// raw k rows (act dtype) -> dot-operand tile (rows of 2F bytes, N parts)
template <class TA, class TS, int F, int NT>
__device__ __forceinline__ void convert_rows(char* dst, const char* src, int tid) {
  constexpr int RAW = F * sizeof(TA), ROW = 2 * F, G = F / 8, PART = ROWS * ROW;
  for_chunks<ROWS, G, NT>(tid, [&](int j, int grp) {
    float x[8];
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      const float2 v = ld2(reinterpret_cast<const TA*>(src + swz_el<RAW, sizeof(TA)>(j, grp * 8 + e)));
      x[e] = v.x;
      x[e + 1] = v.y;
    }
    uint32_t p[4][Dot<TS>::N];
#pragma unroll
    for (int e = 0; e < 4; ++e) pack<TS>(p[e], x[2 * e], x[2 * e + 1]);
#pragma unroll
    for (int n = 0; n < Dot<TS>::N; ++n)
      *reinterpret_cast<uint4*>(dst + n * PART + swz<ROW>(j, grp)) = make_uint4(p[0][n], p[1][n], p[2][n], p[3][n]);
  });
}

// The step's scalars for head bh: t = pos mod K, eta_t = max(0, 1/(t+1) + tib[t]), lr.
struct Token {
  int t;
  float eta, lr;
};

// Append the step's token to the mini-batch cache at row t: its k and v rows, staged swizzled in
// shared memory (sk, sv; RAW_ROW bytes a row), by one warp in 16-byte stores, and its lr.
template <int RAW_ROW, class TA>
__device__ __forceinline__ void append_cache_row(const TTTDecodeParams& P, int64_t bh, int F, const Token& tok,
                                                 const char* sk, const char* sv, int lane) {
  constexpr int CH = RAW_ROW / 16, EPC = 16 / sizeof(TA);
  const int64_t row = (bh * P.K + tok.t) * F;
  for (int i = lane; i < 2 * CH; i += 32) {
    const bool isv = i >= CH;
    const int ch = isv ? i - CH : i;
    const uint4 x = *reinterpret_cast<const uint4*>((isv ? sv : sk) + swz<RAW_ROW>(tok.t, ch));
    *reinterpret_cast<uint4*>(static_cast<TA*>(isv ? P.v_cache : P.k_cache) + row + ch * EPC) = x;
  }
  if (lane == 0) P.lr_cache[bh * P.K + tok.t] = tok.lr;
}
__device__ __forceinline__ Token load_token(const TTTDecodeParams& P, int64_t bh) {
  Token s;
  s.t = static_cast<int>(load_pos(P.pos, P.pos_dtype, bh / P.H) & (P.K - 1));
  s.eta = fmaxf(1.f / static_cast<float>(s.t + 1) + load_any(P.tib, P.tib_dtype, s.t), 0.f);
  s.lr = load_any(P.lr, P.lr_dtype, bh);
  return s;
}
// The head's LayerNorm params (row h of ln_w, ln_b: any float dtype), output bias b and q (F values
// each), elements tid, tid + NT, ... of each: load() issues every global load without waiting
// (one dtype switch for both LayerNorm params, no thread-dependent loop bounds), store() puts them
// in shared memory as fp32. Called apart, the loads' latency overlaps the token's dependent loads;
// loaded and stored element by element they had each head wait for six memory latencies in a row
// (ncu: the first stall of a head).
template <int F, int NT, class TS, class TA>
struct HeadVectors {
  static constexpr int PER = (F + NT - 1) / NT;
  float gw[PER], gb[PER], bv[PER], qq[PER];

  __device__ __forceinline__ void load(const TTTDecodeParams& P, int64_t bh, const TS* b, int tid) {
    load_f32<TS, F, NT>(bv, b, tid);
    load_f32<TA, F, NT>(qq, static_cast<const TA*>(P.q) + bh * F, tid);
    const int64_t off = (bh % P.H) * F;
    const auto both = [&](auto zero) {
      using T = decltype(zero);
      load_f32<T, F, NT>(gw, static_cast<const T*>(P.ln_w) + off, tid);
      load_f32<T, F, NT>(gb, static_cast<const T*>(P.ln_b) + off, tid);
    };
    if (P.ln_w_dtype != P.ln_b_dtype) {
#pragma unroll
      for (int k = 0; k < PER; ++k) {
        const int i = tid + k * NT;
        gw[k] = i < F ? load_any(P.ln_w, P.ln_w_dtype, off + i) : 0.f;
        gb[k] = i < F ? load_any(P.ln_b, P.ln_b_dtype, off + i) : 0.f;
      }
    } else if (P.ln_w_dtype == TTT_F16) {
      both(__half{});
    } else if (P.ln_w_dtype == TTT_BF16) {
      both(__nv_bfloat16{});
    } else if (P.ln_w_dtype == TTT_F64) {
      both(0.0);
    } else {
      both(0.f);
    }
  }

  __device__ __forceinline__ void store(float* gamma, float* beta, float* bias, float* qv, int tid) const {
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int i = tid + k * NT;
      if (i < F) {
        gamma[i] = gw[k];
        beta[i] = gb[k];
        bias[i] = bv[k];
        qv[i] = qq[k];
      }
    }
  }
};

// lr of mini-batch row j (0 for rows not in the mini-batch yet)
__device__ __forceinline__ float row_lr(const TTTDecodeParams& P, int64_t bh, const Token& s, int j) {
  return j < s.t ? P.lr_cache[bh * P.K + j] : (j == s.t ? s.lr : 0.f);
}

// B fragment of the column vector q (column 0 of an n8 tile), k-step ks; q is fp32 in shared memory
template <class TS>
__device__ __forceinline__ void q_frag(uint32_t (&b)[Dot<TS>::N][2], const float* q, int ks, int g, int c) {
  uint32_t lo[Dot<TS>::N], hi[Dot<TS>::N];
  const int k0 = 16 * ks + 2 * c;
  pack<TS>(lo, g == 0 ? q[k0] : 0.f, g == 0 ? q[k0 + 1] : 0.f);
  pack<TS>(hi, g == 0 ? q[k0 + 8] : 0.f, g == 0 ? q[k0 + 9] : 0.f);
#pragma unroll
  for (int n = 0; n < Dot<TS>::N; ++n) {
    b[n][0] = lo[n];
    b[n][1] = hi[n];
  }
}

// q (fp32 in shared memory) as row 15 of the A fragment a of k-step ks (threads g = 7 hold it)
template <class TS>
__device__ __forceinline__ void q_as_row15(uint32_t (&a)[Dot<TS>::N][4], const float* q, int ks, int g, int c) {
  uint32_t lo[Dot<TS>::N], hi[Dot<TS>::N];
  const int k0 = 16 * ks + 2 * c;
  pack<TS>(lo, q[k0], q[k0 + 1]);
  pack<TS>(hi, q[k0 + 8], q[k0 + 9]);
#pragma unroll
  for (int n = 0; n < Dot<TS>::N; ++n) {
    a[n][1] = g == 7 ? lo[n] : a[n][1];
    a[n][3] = g == 7 ? hi[n] : a[n][3];
  }
}

// One pass over a weight tile in shared memory, both kernels' first product: Z += K W for the 16
// mini-batch rows (K's fp16/bf16 copy at sKd), attn += K q and zq^T += W^T q with q as an n8
// column, over KS k-steps of 16 rows and NP pairs of 8-column tiles from column tile c8 (this
// warp's). Each W fragment is also the A operand of the transposed product, so q costs one mma
// per fragment instead of two. With Q_ROW15 (row 15 free: its lr is 0) q replaces that row of K,
// Z's row 15 is q W and the transposed product is skipped (zq untouched).
template <class TS, int KS, int NP, int KD_PART, int KD_ROW, int W_PART, int W_ROW, bool Q_ROW15 = false>
__device__ __forceinline__ void kw_pass(float (&z)[2 * NP][4], float (&at)[4], float (&zq)[NP][4], uint32_t sKd,
                                        uint32_t sW, int c8, const float* qv, int lane) {
  constexpr int N = Dot<TS>::N;
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t ka[N][4], bq[N][2];
    ldsm4<N, KD_PART>(ka, sKd + swz<KD_ROW>(lane & 15, 2 * ks + (lane >> 4)));
    q_frag<TS>(bq, qv, ks, g, c);
    if constexpr (Q_ROW15) q_as_row15<TS>(ka, qv, ks, g, c);
    mma<TS>(at, ka, bq);
#pragma unroll
    for (int np = 0; np < NP; ++np) {
      uint32_t r[N][4], b0[N][2], b1[N][2];
      ldsm4_t<N, W_PART>(r, sW + swz<W_ROW>(16 * ks + (lane & 7) + ((lane >> 3) & 1) * 8, c8 + 2 * np + (lane >> 4)));
      b_halves(r, b0, b1);
      mma<TS>(z[2 * np], ka, b0);
      mma<TS>(z[2 * np + 1], ka, b1);
      if constexpr (!Q_ROW15) {
        uint32_t wt[N][4];
        a_transposed(r, wt);
        mma<TS>(zq[np], wt, bq);
      }
    }
  }
}

// acc += A W[row0 : row0 + 16, :] for one k-step: A a 16x16 A fragment, W a tile in shared
// memory whose NP pairs of 8-column tiles are all taken (TTT-MLP's products with W2).
template <class TS, int NP, int W_PART, int W_ROW>
__device__ __forceinline__ void mma_w_rows(float (&acc)[2 * NP][4], const uint32_t (&a)[Dot<TS>::N][4], uint32_t sW,
                                           int row0, int lane) {
  constexpr int N = Dot<TS>::N;
#pragma unroll
  for (int np = 0; np < NP; ++np) {
    uint32_t r[N][4], b0[N][2], b1[N][2];
    ldsm4_t<N, W_PART>(r, sW + swz<W_ROW>(row0 + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * np + (lane >> 4)));
    b_halves(r, b0, b1);
    mma<TS>(acc[2 * np], a, b0);
    mma<TS>(acc[2 * np + 1], a, b1);
  }
}

// d/dz of 0.5 * ||LN(z) - (v - k)||^2 for the 16 rows of z (C layout, NT n-tiles = F
// columns), scaled by each row's lr; in place. k, v: the raw row tiles (act dtype). A thread
// holds rows g (elements 0, 1 of each n-tile) and g + 8 (elements 2, 3); without ROWS8 rows
// 8-15 are padding (a token at t < 8, warp-uniform): their G is 0 and only rows 0-7 are derived.
template <int F, class TA, bool ROWS8 = true>
__device__ __forceinline__ void ln_l2_grad_rows(float (&z)[F / 8][4], const float* gamma, const float* beta,
                                                const char* sk, const char* sv, int g, int c, float lr0, float lr1) {
  constexpr int NT = F / 8, RAW = F * sizeof(TA), P = ROWS8 ? 2 : 1;  // row g + 8p: elements 2p, 2p + 1
  float m[2] = {0.f, 0.f}, v[2] = {0.f, 0.f}, r[2], s1[2] = {0.f, 0.f}, s2[2] = {0.f, 0.f};
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int p = 0; p < P; ++p) m[p] += z[nt][2 * p] + z[nt][2 * p + 1];
#pragma unroll
  for (int p = 0; p < P; ++p) m[p] = quad_sum(m[p]) * (1.f / F);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int p = 0; p < P; ++p) {
      z[nt][2 * p] -= m[p];
      z[nt][2 * p + 1] -= m[p];
      v[p] += z[nt][2 * p] * z[nt][2 * p] + z[nt][2 * p + 1] * z[nt][2 * p + 1];
    }
#pragma unroll
  for (int p = 0; p < P; ++p) r[p] = rsqrtf(quad_sum(v[p]) * (1.f / F) + LN_EPS);
  float gh[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int col = 8 * nt + 2 * c;
    const float2 ga = *reinterpret_cast<const float2*>(gamma + col), be = *reinterpret_cast<const float2*>(beta + col);
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const float2 k = ld2(reinterpret_cast<const TA*>(sk + swz_el<RAW, sizeof(TA)>(g + 8 * p, col)));
      const float2 vv = ld2(reinterpret_cast<const TA*>(sv + swz_el<RAW, sizeof(TA)>(g + 8 * p, col)));
      const float tg[2] = {vv.x - k.x, vv.y - k.y};
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float gm = e ? ga.y : ga.x, bt = e ? be.y : be.x;
        float& x = z[nt][2 * p + e];
        x *= r[p];  // now x_hat
        gh[nt][2 * p + e] = (gm * x + bt - tg[e]) * gm;
      }
      s1[p] += gh[nt][2 * p] + gh[nt][2 * p + 1];
      s2[p] += gh[nt][2 * p] * z[nt][2 * p] + gh[nt][2 * p + 1] * z[nt][2 * p + 1];
    }
  }
  const float lr[2] = {lr0, lr1};
#pragma unroll
  for (int p = 0; p < P; ++p) {
    s1[p] = quad_sum(s1[p]);
    s2[p] = quad_sum(s2[p]);
    const float f = r[p] * (1.f / F) * lr[p];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) z[nt][2 * p + e] = (F * gh[nt][2 * p + e] - s1[p] - z[nt][2 * p + e] * s2[p]) * f;
  }
  if constexpr (!ROWS8) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) z[nt][2] = z[nt][3] = 0.f;
  }
}

// q + LN(z) of one row spread as z[nt][e] = column 8nt+2c+e over the quad (every quad holds
// the whole row); quad g writes the n-tiles nt = g (mod 8).
template <int F, class TA>
__device__ __forceinline__ void write_output(float (&z)[F / 8][2], const float* gamma, const float* beta,
                                             const float* q, TA* out, int g, int c) {
  constexpr int NT = F / 8;
  float m = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) m += z[nt][0] + z[nt][1];
  m = quad_sum(m) * (1.f / F);
  float v = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    z[nt][0] -= m;
    z[nt][1] -= m;
    v += z[nt][0] * z[nt][0] + z[nt][1] * z[nt][1];
  }
  const float r = rsqrtf(quad_sum(v) * (1.f / F) + LN_EPS);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    if ((nt & 7) != g) continue;
    const int col = 8 * nt + 2 * c;
    st2(out + col, q[col] + gamma[col] * z[nt][0] * r + beta[col],
        q[col + 1] + gamma[col + 1] * z[nt][1] * r + beta[col + 1]);
  }
}

// Lets KERNEL take `bytes` of dynamic shared memory (above the 48 KB default), once per device.
template <auto KERNEL>
cudaError_t allow_smem(int bytes) {
  static std::atomic<uint64_t> done{0};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = 1ull << (dev & 63);
  if (done.load(std::memory_order_relaxed) & bit) return cudaSuccess;
  err = cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) done.fetch_or(bit);
  return err;
}

// How many CTAs of KERNEL (`threads` threads, `smem` bytes of shared memory) the device holds at
// once, for persistent grids; queried once per device, so launches stay free of the queries.
template <auto KERNEL>
cudaError_t resident_ctas(int threads, int smem, int64_t* n) {
  static std::atomic<int64_t> known[64];  // per device; 0: not queried yet
  int dev = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  std::atomic<int64_t>& k = known[dev & 63];
  if ((*n = k.load(std::memory_order_relaxed)) > 0) return cudaSuccess;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, KERNEL, threads, smem);
  if (err != cudaSuccess) return err;
  *n = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  k.store(*n, std::memory_order_relaxed);
  return cudaSuccess;
}

// dtype dispatch helpers for the launchers
template <class F>
const char* dispatch_dtype(int code, F&& f) {
  switch (code) {
    case TTT_F32: return f(float());
    case TTT_F16: return f(__half());
    case TTT_BF16: return f(__nv_bfloat16());
    default: return "activations and states must be float32, float16 or bfloat16";
  }
}

}  // namespace ttt
