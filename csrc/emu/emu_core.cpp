// Scheduler of the host emulation (emu_core.h).
#include <cstring>

#include "emu_prelude.h"
namespace ttt_emu {
Fiber* cur = nullptr;
Run* run = nullptr;
ucontext_t sched;
const char* last_error = nullptr;
static void (*g_body)(const void*);
static const void* g_arg;
static std::vector<char*> g_stacks;  // fiber stacks, reused across launches
constexpr size_t STACK = 256 * 1024;
static void trampoline() {
  g_body(g_arg);
  cur->done = true;
}
void launch_clusters(void (*body)(const void*), const void* arg, unsigned grid, unsigned block, size_t smem,
                     unsigned cluster) {
  if (grid % cluster) { last_error = "grid not a multiple of the cluster"; return; }
  if (block % 32) { last_error = "block not whole warps"; return; }
  g_body = body;
  g_arg = arg;
  ::gridDim = Dim3{grid, 1, 1};
  const int wpc = block / 32;
  for (unsigned c0 = 0; c0 < grid; c0 += cluster) {
    Run r;
    r.warps_per_cta = wpc;
    r.fibers.resize(cluster * block);
    r.smem.assign(cluster, std::vector<char>(smem + 128));
    for (auto& s : r.smem)  // poison: reads of unwritten shared memory show up as NaN/garbage
      std::memset(s.data(), 0xff, s.size());
    r.cta_bar.assign(cluster, Barrier{int(block), 0, 0});
    r.warps.resize(cluster * wpc);
    for (auto& w : r.warps) w.bar = Barrier{32, 0, 0};
    r.cluster_bar = Barrier{int(cluster * block), 0, 0};
    run = &r;
    for (unsigned i = 0; i < cluster * block; ++i) {
      Fiber& f = r.fibers[i];
      f.cta = i / block;
      f.tid.x = i % block;
      f.bid.x = c0 + f.cta;
      f.warp = f.tid.x / 32;
      f.lane = f.tid.x % 32;
      while (g_stacks.size() <= i) g_stacks.push_back(new char[STACK]);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = g_stacks[i];
      f.ctx.uc_stack.ss_size = STACK;
      f.ctx.uc_link = &sched;
      makecontext(&f.ctx, trampoline, 0);
    }
    // between barriers the threads run one after the other, in index order for one cluster and
    // in reverse for the next, so a read that races a write shows whichever thread comes first
    const bool reverse = (c0 / cluster) & 1;
    for (;;) {
      bool alive = false, progress = false;
      for (size_t k = 0; k < r.fibers.size(); ++k) {
        Fiber& f = r.fibers[reverse ? r.fibers.size() - 1 - k : k];
        if (f.done) continue;
        alive = true;
        if (f.wait && f.wait->gen == f.wait_gen) continue;
        f.wait = nullptr;
        cur = &f;
        swapcontext(&sched, &f.ctx);
        progress = true;
      }
      if (!alive) break;
      if (!progress) { std::fprintf(stderr, "emu: deadlock in cluster at block %u\n", c0); std::abort(); }
    }
    run = nullptr;
  }
}
}  // namespace ttt_emu
