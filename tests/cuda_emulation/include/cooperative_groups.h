// Stand-in for CUDA's <cooperative_groups.h> in the CPU emulation: thread-block clusters are not
// emulated (their blocks must run at once, sharing memory); kernels that use them compile, and
// fault if they run (cudaLaunchKernelEx never launches them, see shim.h).
#pragma once
#include "../shim.h"

namespace cooperative_groups {

struct cluster_group {
  unsigned block_rank() const {
    gmk_emu::fault("cluster_group::block_rank: clusters are not emulated");
    return 0;
  }
  void sync() const { gmk_emu::fault("cluster_group::sync: clusters are not emulated"); }
  template <typename T>
  T* map_shared_rank(T* p, unsigned) const {
    gmk_emu::fault("cluster_group::map_shared_rank: clusters are not emulated");
    return p;
  }
};

inline cluster_group this_cluster() { return {}; }

}  // namespace cooperative_groups
