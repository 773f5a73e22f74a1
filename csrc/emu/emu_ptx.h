// The inline-PTX wrappers of ttt_decode_dual.cuh for the host emulation, written from the
// PTX ISA's fragment layouts (g = lane/4, c = lane%4), independently of how the kernels use
// them: A 16x16 element (m, k) sits in lane (m%8)*4 + (k%8)/2, register (m/8) + 2*(k/8);
// B 16x8 (k, n) in lane n*4 + (k%8)/2, register k/8; C (m, n) in lane (m%8)*4 + n/2.
#pragma once
namespace ttt {
inline uint32_t smem_u32(const void* p) { return uint32_t(static_cast<const char*>(p) - ttt_emu::smem_base()); }
inline uint16_t emu_b16(uint32_t addr) { uint16_t v; std::memcpy(&v, ttt_emu::smem_base() + addr, 2); return v; }
inline uint32_t emu_pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }
// 16-byte accesses (ldmatrix rows, stmatrix rows, cp.async, ld.global.nc.v4) fault on a GPU when
// misaligned; here the launch reports it (sticky, as CUDA's errors are)
inline void emu_aligned16(uintptr_t a, const char* what) {
  if (a % 16) ttt_emu::last_error = what;
}
// ldmatrix .x4: lane 8i+r addresses row r of matrix i
inline void emu_ldsm(uint32_t (&r)[4], uint32_t addr, bool trans) {
  auto& w = ttt_emu::wx();
  const int lane = ttt_emu::cur->lane, g = lane >> 2, c = lane & 3;
  emu_aligned16(addr, "misaligned ldmatrix row");
  w.u[lane][0] = addr;
  ttt_emu::arrive(w.bar);
  for (int i = 0; i < 4; ++i) {
    if (!trans) {  // row g, elements 2c, 2c+1
      const uint32_t a = w.u[8 * i + g][0] + 4 * c;
      r[i] = emu_pair(emu_b16(a), emu_b16(a + 2));
    } else {  // column g: rows 2c, 2c+1
      r[i] = emu_pair(emu_b16(w.u[8 * i + 2 * c][0] + 2 * g), emu_b16(w.u[8 * i + 2 * c + 1][0] + 2 * g));
    }
  }
  ttt_emu::arrive(w.bar);
}
inline void ldsm4(uint32_t (&r)[4], uint32_t addr) { emu_ldsm(r, addr, false); }
inline void ldsm4_t(uint32_t (&r)[4], uint32_t addr) { emu_ldsm(r, addr, true); }
// stmatrix .x4: lane (g, c) stores its elements 2c, 2c+1 of row g of matrix i to that row's address
inline void stsm4(uint32_t addr, const uint32_t (&r)[4]) {
  auto& w = ttt_emu::wx();
  const int lane = ttt_emu::cur->lane, g = lane >> 2, c = lane & 3;
  emu_aligned16(addr, "misaligned stmatrix row");
  w.u[lane][0] = addr;
  ttt_emu::arrive(w.bar);
  for (int i = 0; i < 4; ++i) std::memcpy(ttt_emu::smem_base() + w.u[8 * i + g][0] + 4 * c, &r[i], 4);
  ttt_emu::arrive(w.bar);
}
inline uint32_t movt(uint32_t x) {  // input: row g cols 2c..2c+1; output: column g rows 2c..2c+1
  auto& w = ttt_emu::wx();
  const int lane = ttt_emu::cur->lane, g = lane >> 2, c = lane & 3;
  w.u[lane][0] = x;
  ttt_emu::arrive(w.bar);
  auto el = [&](int row, int col) { return uint16_t(w.u[row * 4 + col / 2][0] >> (16 * (col & 1))); };
  const uint32_t y = emu_pair(el(2 * c, g), el(2 * c + 1, g));
  ttt_emu::arrive(w.bar);
  return y;
}
template <class E> inline float emu_f(uint16_t v) {
  if constexpr (std::is_same<E, __half>::value) return __half2float(__half{v});
  else return __bfloat162float(__nv_bfloat16{v});
}
template <class E> inline void emu_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto& w = ttt_emu::wx();
  const int lane = ttt_emu::cur->lane, g = lane >> 2, c = lane & 3;
  for (int i = 0; i < 4; ++i) w.u[lane][i] = a[i];
  w.u[lane][4] = b[0];
  w.u[lane][5] = b[1];
  ttt_emu::arrive(w.bar);
  auto A = [&](int m, int k) {  // reg: +1 for rows 8-15, +2 for cols 8-15
    const uint32_t v = w.u[(m & 7) * 4 + (k & 7) / 2][(m >> 3) + 2 * (k >> 3)];
    return emu_f<E>(uint16_t(v >> (16 * (k & 1))));
  };
  auto B = [&](int k, int n) {
    const uint32_t v = w.u[n * 4 + (k & 7) / 2][4 + (k >> 3)];
    return emu_f<E>(uint16_t(v >> (16 * (k & 1))));
  };
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int m = g + 8 * (i >> 1), n = 2 * c + (i & 1);
    float s = d[i];
    for (int k = 0; k < 16; ++k) s += A(m, k) * B(k, n);
    out[i] = s;
  }
  ttt_emu::arrive(w.bar);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}
inline float tanh_approx(float x) { return std::tanh(x); }  // the hardware's is ~5e-4 off
inline void mma1(__half, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { emu_mma<__half>(d, a, b); }
inline void mma1(__nv_bfloat16, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu_mma<__nv_bfloat16>(d, a, b);
}
// cp.async: see emu_core.h (poisoned when issued, landed at the issuing thread's wait)
inline void cp_async16(uint32_t dst, const void* src, bool valid) {
  emu_aligned16(dst, "misaligned cp.async destination");
  emu_aligned16(reinterpret_cast<uintptr_t>(src), "misaligned cp.async source");
  std::memset(ttt_emu::smem_base() + dst, 0xff, 16);
  ttt_emu::cur->open.push_back({dst, valid ? src : nullptr});
}
inline void cp_async_commit() {
  auto& f = *ttt_emu::cur;
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}
template <int PENDING> inline void cp_async_wait() {
  auto& f = *ttt_emu::cur;
  while (f.groups.size() > PENDING) {
    ttt_emu::land(f.groups.front());
    f.groups.erase(f.groups.begin());
  }
}
inline uint4 ld_nc16(const void* p) {
  emu_aligned16(reinterpret_cast<uintptr_t>(p), "misaligned 16-byte global load");
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}
}  // namespace ttt
