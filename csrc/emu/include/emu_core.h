// Host emulation of the CUDA kernels, for tests on machines without a GPU: every CUDA
// thread is a fiber (ucontext) of one host thread, a thread-block cluster runs at a time (its
// threads one after the other between barriers: in index order, every other cluster in reverse);
// __syncwarp/__syncthreads/cluster.sync are barriers, and the warp collectives (shuffles,
// ldmatrix, mma, movmatrix) exchange their operands through per-warp slots between two
// barriers. Shared memory is poisoned at launch, so reads of unwritten shared memory show.
// cp.async is asynchronous here too: a copy poisons its destination when issued and lands
// (reading its source then) only when the issuing thread waits for its group, so a read
// before the wait, or by a thread that did not wait and meet it at a barrier, sees poison.
#pragma once
#include <ucontext.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "cuda_runtime_api.h"
#include "emu_types.h"

namespace ttt_emu {
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
struct Barrier { int participants = 0, count = 0; uint64_t gen = 0; };
struct WarpX {
  Barrier bar;
  uint32_t u[32][12];
  float f[32][4];
};
struct AsyncCopy {
  uint32_t dst;
  const void* src;  // nullptr: zero-fill
};
struct Fiber {
  ucontext_t ctx;
  std::vector<AsyncCopy> open;                 // issued since the last commit
  std::vector<std::vector<AsyncCopy>> groups;  // committed, oldest first
  Dim3 tid, bid;
  int cta = 0, warp = 0, lane = 0;
  bool done = false;
  Barrier* wait = nullptr;
  uint64_t wait_gen = 0;
};
struct Run {
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>> smem;
  std::vector<Barrier> cta_bar;
  std::vector<WarpX> warps;  // cta * warps_per_cta + warp
  Barrier cluster_bar;
  int warps_per_cta = 0;
};
extern Fiber* cur;
extern Run* run;
extern ucontext_t sched;
extern const char* last_error;

inline void arrive(Barrier& b) {
  if (++b.count == b.participants) { b.count = 0; ++b.gen; return; }
  cur->wait = &b;
  cur->wait_gen = b.gen;
  swapcontext(&cur->ctx, &sched);
}
inline WarpX& wx() { return run->warps[cur->cta * run->warps_per_cta + cur->warp]; }
inline char* smem_base() { return run->smem[cur->cta].data(); }
inline void land(const std::vector<AsyncCopy>& group) {
  for (const AsyncCopy& c : group) {
    if (c.src) std::memcpy(smem_base() + c.dst, c.src, 16);
    else std::memset(smem_base() + c.dst, 0, 16);
  }
}

// runs body(arg) as every thread of the grid, one cluster at a time
void launch_clusters(void (*body)(const void*), const void* arg, unsigned grid, unsigned block, size_t smem,
                     unsigned cluster);
// a kernel taking its parameter struct P by value, as a body for launch_clusters
template <class P>
struct Kernel {
  static inline void (*fn)(P) = nullptr;
  static void body(const void* p) { fn(*static_cast<const P*>(p)); }
};
template <class P>
void launch(void (*kernel)(P), const P& p, unsigned grid, unsigned block, size_t smem, unsigned cluster) {
  Kernel<P>::fn = kernel;
  launch_clusters(&Kernel<P>::body, &p, grid, block, smem, cluster);
}
}  // namespace ttt_emu

#define threadIdx (ttt_emu::cur->tid)
#define blockIdx (ttt_emu::cur->bid)
inline ttt_emu::Dim3 gridDim;  // a variable, not a macro: launch configs have a gridDim member
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

inline void __syncwarp(unsigned = 0xffffffffu) { ttt_emu::arrive(ttt_emu::wx().bar); }
inline void __syncthreads() { ttt_emu::arrive(ttt_emu::run->cta_bar[ttt_emu::cur->cta]); }
inline float __shfl_sync(unsigned, float v, int src) {
  auto& w = ttt_emu::wx();
  w.f[ttt_emu::cur->lane][0] = v;
  ttt_emu::arrive(w.bar);
  const float r = w.f[src & 31][0];
  ttt_emu::arrive(w.bar);
  return r;
}
inline float __shfl_xor_sync(unsigned m, float v, int x) { return __shfl_sync(m, v, ttt_emu::cur->lane ^ x); }

inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
// a small GPU: 2 SMs of one CTA each, so persistent grids walk several heads per CTA
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = 2; return cudaSuccess; }
template <class K> cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, K, int, size_t) {
  *n = 1;
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t) { return ttt_emu::last_error ? ttt_emu::last_error : "emu error"; }
inline cudaError_t cudaGetLastError() { return ttt_emu::last_error ? cudaErrorInvalidValue : cudaSuccess; }  // sticky
template <class K> cudaError_t cudaFuncSetAttribute(K, cudaFuncAttribute, int bytes) {
  if (bytes > 227 * 1024) { ttt_emu::last_error = "shared memory above 227 KB"; return cudaErrorInvalidValue; }
  return cudaSuccess;
}
template <class P>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* c, void (*k)(P), P p) {
  unsigned cl = 1;
  for (unsigned i = 0; i < c->numAttrs; ++i)
    if (c->attrs[i].id == cudaLaunchAttributeClusterDimension) cl = c->attrs[i].val.clusterDim.x;
  ttt_emu::launch(k, p, c->gridDim.x, c->blockDim.x, c->dynamicSmemBytes, cl);
  return cudaSuccess;
}
template <class P, class G, class B>
void emu_chevron(void (*k)(P), const P& p, G grid, B block, size_t smem, cudaStream_t) {
  ttt_emu::launch(k, p, dim3(grid).x, dim3(block).x, smem, 1);
}
