// host emulation: the cluster group of cooperative_groups
#pragma once
#include "emu_core.h"
namespace cooperative_groups {
struct cluster_group {
  unsigned block_rank() const { return ttt_emu::cur->cta; }
  void sync() const { ttt_emu::arrive(ttt_emu::run->cluster_bar); }
  template <class T> T* map_shared_rank(T* p, unsigned r) const {
    char* own = ttt_emu::run->smem[ttt_emu::cur->cta].data();
    return reinterpret_cast<T*>(ttt_emu::run->smem[r].data() + (reinterpret_cast<char*>(p) - own));
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups
