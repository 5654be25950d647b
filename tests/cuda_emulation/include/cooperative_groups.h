// Stand-in for CUDA's <cooperative_groups.h> in the CPU emulation: the thread-block cluster of the running
// block (see shim.h for how clusters run).
#pragma once
#include "../shim.h"

namespace cooperative_groups {

struct cluster_group {
  unsigned block_rank() const { return gmk_emu::cluster_block_rank(); }
  unsigned num_blocks() const { return gmk_emu::cluster_num_blocks(); }
  void sync() const { gmk_emu::cluster_sync(); }
  template <typename T>
  T* map_shared_rank(T* p, unsigned rank) const {
    return static_cast<T*>(gmk_emu::map_shared_rank(p, rank));
  }
};

inline cluster_group this_cluster() { return {}; }

}  // namespace cooperative_groups
