// The emulator's runtime (see shim.h for the execution model): the emulated device, launches,
// the fiber scheduler of a block, barriers, warp exchanges, shared memory and faults.
#include <signal.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "shim.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace gmk_emu {
namespace {

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr std::size_t kSharedBytes = 48 * 1024;  // static shared memory per block on every GPU, and the
                                                 // default limit of static + dynamic
constexpr std::size_t kArenaBytes = 227 * 1024;  // the largest opt-in limit (9.0)
constexpr std::uint64_t kMaxThreadsPerLaunch = 1 << 20;  // tests keep launches small
constexpr std::size_t kWarpMemoBytes = 8 * 1024;

struct Device {
  int major = 9, minor = 0, multiprocessors = 132;
} device;

// cudaDevAttrMaxSharedMemoryPerBlockOptin: static + dynamic shared memory a block may opt in to.
std::size_t optin_shared_bytes() {
  const int cc = device.major * 10 + device.minor;
  if (cc >= 90) return 227 * 1024;
  if (cc == 80 || cc == 87) return 163 * 1024;
  if (cc >= 86) return 99 * 1024;
  if (cc == 75) return 64 * 1024;
  return 96 * 1024;  // 7.0
}

std::map<const void*, std::size_t> max_dynamic_shared;  // per kernel, from cudaFuncSetAttribute
std::map<const void*, bool> non_portable_clusters;      // per kernel: clusters of 9 to 16 blocks allowed
cudaError_t last_error = cudaSuccess;
int fault_count = 0;
std::string first_fault;
std::string launched;  // the kernels launched since the last gmk_emu_take_launches, one a line
std::uint64_t launch_serial = 0;
std::uint64_t last_clusters = 0;  // > 0: launches run only their last clusters (blocks)

enum class State { Ready, AtBarrier, AtWarp, AtCluster, Done };

struct Fiber {
  ucontext_t context;
  State state = State::Ready;
  uint3 thread{0, 0, 0};
  unsigned linear = 0;
};

// One block of the cluster being run.
struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  uint3 index{0, 0, 0};
  unsigned rank = 0;                 // in its cluster
  unsigned char* arena = nullptr;    // its shared memory
  unsigned current = 0, done = 0, at_barrier = 0;
  std::uint64_t barrier_generation = 0;            // __syncthreads completed
  std::uint64_t pass = 0;                          // the block's passes so far (their parity: the order)
  std::vector<unsigned> at_warp;                   // per warp: threads waiting in warp_sync
  std::vector<std::uint64_t> warp_phase;           // per warp: warp_syncs completed
  std::vector<unsigned char> warp_memo;            // per warp: kWarpMemoBytes
  std::vector<unsigned char> slots;                // per thread: 16 bytes for warp exchanges
  bool exited() const { return done == fibers.size(); }
};

// The thread-block cluster being run (a launch without clusters: clusters of one block). Its blocks run
// at once: the scheduler moves from block to block when every thread of one waits at a cluster barrier.
struct Cluster {
  std::vector<Block> blocks;
  unsigned threads = 0, done = 0, at_barrier = 0;
  std::uint64_t generation = 0;  // cluster barriers completed
};

Block* block = nullptr;      // the block of the running thread
Cluster* cluster = nullptr;  // the running cluster
std::vector<std::unique_ptr<char[]>> stacks;
struct FreeArena {
  void operator()(unsigned char* p) const { std::free(p); }
};
std::vector<std::unique_ptr<unsigned char, FreeArena>> arenas;  // one per block of a cluster, kArenaBytes each
std::size_t launch_dynamic_shared = 0, launch_shared_limit = kSharedBytes;
std::size_t launch_shared_top = 0;  // the end of the static variables placed so far (after the dynamic bytes)

unsigned warp_of(unsigned linear) { return linear / 32; }
unsigned warp_size_of(unsigned warp) {
  const unsigned threads = static_cast<unsigned>(block->fibers.size());
  return std::min(32u, threads - warp * 32);
}

Fiber& self() { return block->fibers[block->current]; }

void yield() { swapcontext(&self().context, &block->scheduler); }

void fiber_main() {
  (*block->body)();
  Fiber& fiber = self();
  fiber.state = State::Done;
  ++block->done;
  ++cluster->done;
  if (block->at_barrier > 0)
    fault("block (%u, %u, %u): thread %u exited while %u threads wait at __syncthreads", blockIdx.x, blockIdx.y,
          blockIdx.z, fiber.linear, block->at_barrier);
  if (cluster->at_barrier > 0)
    fault("block (%u, %u, %u): thread %u exited while %u threads of the cluster wait at its barrier", blockIdx.x,
          blockIdx.y, blockIdx.z, fiber.linear, cluster->at_barrier);
  // Returning resumes uc_link, the scheduler.
}

void prepare_block(Block& b, const std::function<void()>& body, dim3 block_dim, uint3 index, unsigned rank) {
  const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
  b.fibers.resize(threads);
  b.body = &body;
  b.index = index;
  b.rank = rank;
  b.at_warp.assign((threads + 31) / 32, 0);
  b.warp_phase.assign((threads + 31) / 32, 0);
  b.warp_memo.assign((threads + 31) / 32 * kWarpMemoBytes, 0);
  b.slots.assign(std::size_t(threads) * 16, 0);
  while (arenas.size() <= rank) {
    arenas.emplace_back(static_cast<unsigned char*>(std::aligned_alloc(256, kArenaBytes)));
  }
  b.arena = arenas[rank].get();
  std::memset(b.arena, 0xff, launch_shared_limit);  // NaN in every float type
  while (stacks.size() < std::size_t(rank + 1) * threads) stacks.emplace_back(new char[kStackBytes]);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.linear = t;
    f.thread = {t % block_dim.x, t / block_dim.x % block_dim.y, t / (block_dim.x * block_dim.y)};
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks[std::size_t(rank) * threads + t].get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
}

// Runs the block until none of its threads is ready (each waits at a cluster barrier or has exited), or
// until a cluster barrier completes; returns whether any thread ran. A pass runs the block from one barrier
// to the next: warp after warp, each warp's threads in turn until every one waits at a barrier or has
// exited (warp-collective operations synchronise the warp only). Passes alternate ascending and descending
// order.
bool run_block(Block& b) {
  block = &b;
  blockIdx = b.index;
  const unsigned threads = static_cast<unsigned>(b.fibers.size()), warps = (threads + 31) / 32;
  const std::uint64_t cluster_generation = cluster->generation;
  bool progressed = false;
  for (bool ran_pass = true; ran_pass && cluster->generation == cluster_generation;) {
    ran_pass = false;
    const bool ascending = b.pass % 2 == 0;
    const std::uint64_t generation = b.barrier_generation;
    const auto running = [&] {
      return b.barrier_generation == generation && cluster->generation == cluster_generation;
    };
    for (unsigned i = 0; i < warps && running(); ++i) {
      const unsigned warp = ascending ? i : warps - 1 - i, lanes = warp_size_of(warp);
      for (bool ran = true; ran && running();) {
        ran = false;
        for (unsigned j = 0; j < lanes && running(); ++j) {
          const unsigned t = warp * 32 + (ascending ? j : lanes - 1 - j);
          if (b.fibers[t].state != State::Ready) continue;
          b.current = t;
          threadIdx = b.fibers[t].thread;
          swapcontext(&b.scheduler, &b.fibers[t].context);
          ran = ran_pass = true;
        }
      }
    }
    if (ran_pass) ++b.pass;
    progressed = progressed || ran_pass;
  }
  block = nullptr;
  return progressed;
}

// Runs every thread of the cluster's blocks to completion. Each block runs until all its threads wait at a
// cluster barrier (or have exited), then the next; the blocks' order alternates between ascending and
// descending rank from one cluster barrier to the next, so that a missing cluster barrier shows as a missing
// __syncthreads does: a block reads another's shared memory before it is written, or after it is overwritten.
void run_cluster(Cluster& c) {
  cluster = &c;
  const unsigned size = static_cast<unsigned>(c.blocks.size());
  for (std::uint64_t pass = 0; c.done < c.threads; ++pass) {
    const bool ascending = pass % 2 == 0;
    const std::uint64_t generation = c.generation;
    bool progressed = false;
    for (unsigned i = 0; i < size && c.generation == generation; ++i) {
      Block& b = c.blocks[ascending ? i : size - 1 - i];
      if (!b.exited()) progressed = run_block(b) || progressed;
    }
    if (!progressed) {  // the waiting threads' stacks are abandoned
      unsigned at_barrier = 0, at_warp = 0;
      for (const Block& b : c.blocks) {
        at_barrier += b.at_barrier;
        at_warp += std::accumulate(b.at_warp.begin(), b.at_warp.end(), 0u);
      }
      blockIdx = c.blocks[0].index;
      fault("block (%u, %u, %u)%s: deadlock: %u threads wait at __syncthreads, %u at a cluster barrier, %u in a "
            "warp-collective operation, %u exited", blockIdx.x, blockIdx.y, blockIdx.z,
            size > 1 ? "'s cluster" : "", at_barrier, c.at_barrier, at_warp, c.done);
      break;
    }
  }
  cluster = nullptr;
}

// A thread that dies (__trap, a memory fault) never resumes; the others may then deadlock.
[[noreturn]] void kill_thread() {
  Fiber& fiber = self();
  fiber.state = State::Done;
  ++block->done;
  ++cluster->done;
  setcontext(&block->scheduler);
  std::abort();
}

// SIGSEGV / SIGBUS in a kernel (an address out of any allocation, a misaligned 16-byte access): a
// fault, as the GPU's illegal or misaligned address errors, instead of the end of the process.
// (fault() is not async-signal-safe; the signal comes from the kernel's own code, not from libc.)
struct sigaction previous_segv, previous_bus;
stack_t previous_stack;
alignas(16) char signal_stack[64 * 1024];

void restore_signal_handlers() {
  sigaction(SIGSEGV, &previous_segv, nullptr);
  sigaction(SIGBUS, &previous_bus, nullptr);
  sigaltstack(&previous_stack, nullptr);
}

void on_memory_fault(int signal, siginfo_t* info, void*) {
  if (!block) {  // not a kernel's: the previous handler gets it when the instruction runs again
    restore_signal_handlers();
    return;
  }
  fault("%s at address %p (a misaligned vector access shows as address 0)", signal == SIGBUS ? "SIGBUS" : "SIGSEGV",
        info->si_addr);
  kill_thread();
}

void install_signal_handlers() {
  stack_t stack{};
  stack.ss_sp = signal_stack;
  stack.ss_size = sizeof(signal_stack);
  sigaltstack(&stack, &previous_stack);  // a fiber's overflowed stack cannot run the handler
  struct sigaction action {};
  action.sa_sigaction = on_memory_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &previous_segv);
  sigaction(SIGBUS, &action, &previous_bus);
}

void release(State waiting, unsigned warp) {
  for (Fiber& f : block->fibers)
    if (f.state == waiting && (waiting == State::AtBarrier || warp_of(f.linear) == warp)) f.state = State::Ready;
}

}  // namespace

void fault(const char* format, ...) {
  char message[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(message, sizeof(message), format, args);
  va_end(args);
  if (fault_count++ == 0) {
    first_fault = message;
    if (block)
      first_fault += " (thread " + std::to_string(threadIdx.x) + ", " + std::to_string(threadIdx.y) + ", " +
                     std::to_string(threadIdx.z) + " of block " + std::to_string(blockIdx.x) + ", " +
                     std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) + ")";
  }
}

void trap() {
  fault("__trap()");
  kill_thread();
}

void syncthreads() {
  if (!block) return fault("__syncthreads outside a kernel");
  Fiber& fiber = self();
  fiber.state = State::AtBarrier;
  if (++block->at_barrier + block->done == block->fibers.size()) {
    if (block->done > 0) fault("__syncthreads after %u threads of the block exited", block->done);
    block->at_barrier = 0;
    ++block->barrier_generation;
    release(State::AtBarrier, 0);
  }
  yield();
}

void warp_sync(const char* what) {
  if (!block) return fault("%s outside a kernel", what);
  Fiber& fiber = self();
  const unsigned warp = warp_of(fiber.linear);
  fiber.state = State::AtWarp;
  if (++block->at_warp[warp] == warp_size_of(warp)) {
    block->at_warp[warp] = 0;
    ++block->warp_phase[warp];
    release(State::AtWarp, warp);
  }
  yield();
}

unsigned lane_id() { return block ? self().linear % 32 : 0; }

std::uint64_t warp_phase() { return block ? block->warp_phase[warp_of(self().linear)] : 0; }

void* warp_memo(std::size_t bytes) {
  if (!block || bytes > kWarpMemoBytes) {
    fault("warp_memo of %zu bytes outside a kernel or over %zu", bytes, kWarpMemoBytes);
    std::abort();
  }
  return &block->warp_memo[warp_of(self().linear) * kWarpMemoBytes];
}

void warp_exchange(const void* value, void* out, std::size_t bytes, int source) {
  if (!block) return fault("warp shuffle outside a kernel");
  const unsigned me = self().linear, first = warp_of(me) * 32;
  std::memcpy(&block->slots[std::size_t(me) * 16], value, bytes);
  warp_sync("warp shuffle");
  const bool valid = source >= 0 && unsigned(source) < warp_size_of(warp_of(me));
  std::memcpy(out, valid ? &block->slots[std::size_t(first + source) * 16] : value, bytes);
  warp_sync("warp shuffle");  // nobody overwrites a slot before every lane has read it
}

unsigned warp_ballot(bool predicate) {
  if (!block) {
    fault("__ballot_sync outside a kernel");
    return 0;
  }
  const unsigned me = self().linear, first = warp_of(me) * 32, lanes = warp_size_of(warp_of(me));
  block->slots[std::size_t(me) * 16] = predicate;
  warp_sync("__ballot_sync");
  unsigned bits = 0;
  for (unsigned lane = 0; lane < lanes; ++lane) bits |= unsigned(block->slots[std::size_t(first + lane) * 16] != 0) << lane;
  warp_sync("__ballot_sync");
  return bits;
}

void warp_uniform(const void* value, std::size_t bytes, const char* what) {
  if (!block) return fault("%s outside a kernel", what);
  const unsigned me = self().linear, first = warp_of(me) * 32;
  bytes = std::min<std::size_t>(bytes, 16);
  std::memcpy(&block->slots[std::size_t(me) * 16], value, bytes);
  warp_sync(what);
  if (std::memcmp(&block->slots[std::size_t(first) * 16], value, bytes) != 0)
    fault("%s: lane %u's arguments differ from lane 0's", what, me % 32);
  warp_sync(what);
}

void* shared_variable(SharedTag& tag, std::size_t bytes, std::size_t alignment) {
  if (!block) {
    fault("__shared__ variable outside a kernel");
    return arenas.empty() ? nullptr : arenas[0].get();
  }
  // Every block of a launch has the same layout (the compiler's): placed by the first thread to reach it.
  if (tag.launch_serial != launch_serial) {
    const std::size_t offset = (launch_shared_top + alignment - 1) / alignment * alignment;
    const std::size_t static_bytes = offset + bytes - (launch_dynamic_shared + 15) / 16 * 16;
    if (static_bytes > kSharedBytes || offset + bytes > launch_shared_limit) {
      fault("__shared__ variables need %zu bytes (%zu dynamic), more than the %zu static or %zu in all of a block",
            offset + bytes, launch_dynamic_shared, kSharedBytes, launch_shared_limit);
      return block->arena;
    }
    tag.launch_serial = launch_serial;
    tag.offset = offset;
    launch_shared_top = offset + bytes;
  }
  return block->arena + tag.offset;
}

void* dynamic_shared(std::size_t alignment) {
  if (!block) {
    fault("extern __shared__ variable outside a kernel");
    return nullptr;
  }
  if (alignment > 256) fault("extern __shared__ alignment %zu is over the arena's 256", alignment);
  return block->arena;
}

// --- thread-block clusters ---------------------------------------------------------------------------

unsigned cluster_block_rank() {
  if (!block) fault("cluster_group::block_rank outside a kernel");
  return block ? block->rank : 0;
}

unsigned cluster_num_blocks() {
  if (!cluster) fault("cluster_group::num_blocks outside a kernel");
  return cluster ? static_cast<unsigned>(cluster->blocks.size()) : 0;
}

// barrier.cluster.arrive + wait: every thread of every block of the cluster arrives, then all proceed.
void cluster_sync() {
  if (!block) return fault("cluster_group::sync outside a kernel");
  self().state = State::AtCluster;
  if (++cluster->at_barrier + cluster->done == cluster->threads) {
    if (cluster->done > 0) fault("cluster barrier after %u threads of the cluster exited", cluster->done);
    cluster->at_barrier = 0;
    ++cluster->generation;
    for (Block& b : cluster->blocks)
      for (Fiber& f : b.fibers)
        if (f.state == State::AtCluster) f.state = State::Ready;
  }
  yield();
}

void* map_shared_rank(const void* address, unsigned rank) {
  if (!block) {
    fault("cluster_group::map_shared_rank outside a kernel");
    return const_cast<void*>(address);
  }
  const auto* p = static_cast<const unsigned char*>(address);
  if (p < block->arena || p >= block->arena + launch_shared_limit) {
    fault("cluster_group::map_shared_rank: %p is not in the block's shared memory", address);
    return const_cast<void*>(address);
  }
  if (rank >= cluster->blocks.size()) {
    fault("cluster_group::map_shared_rank: rank %u of a cluster of %zu blocks", rank, cluster->blocks.size());
    return const_cast<void*>(address);
  }
  const Block& target = cluster->blocks[rank];
  if (target.exited())  // its shared memory is gone: a cluster barrier before the exit is missing
    fault("cluster_group::map_shared_rank: block rank %u of the cluster has exited", rank);
  return target.arena + (p - block->arena);
}

cudaError_t set_function_attribute(const void* function, cudaFuncAttribute attribute, int value) {
  switch (attribute) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      if (value < 0 || std::size_t(value) > optin_shared_bytes()) return cudaErrorInvalidValue;
      max_dynamic_shared[function] = std::size_t(value);
      return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      return value >= -1 && value <= 100 ? cudaSuccess : cudaErrorInvalidValue;
    case cudaFuncAttributeNonPortableClusterSizeAllowed:
      if (value != 0 && value != 1) return cudaErrorInvalidValue;
      non_portable_clusters[function] = value == 1;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// Whether the cluster dimensions suit the grid and the device; sets last_error if not.
bool valid_clusters(dim3 grid, dim3 clusters, const void* function) {
  const std::uint64_t size = std::uint64_t(clusters.x) * clusters.y * clusters.z;
  if (size == 1) return true;
  const auto allowed = non_portable_clusters.find(function);
  const std::uint64_t max_size = allowed != non_portable_clusters.end() && allowed->second ? 16 : 8;
  if (device.major < 9) {
    last_error = cudaErrorNotSupported;
    return false;
  }
  if (size == 0 || size > max_size || grid.x % clusters.x || grid.y % clusters.y || grid.z % clusters.z) {
    last_error = cudaErrorInvalidClusterSize;
    return false;
  }
  return true;
}

bool run_grid(dim3 grid, dim3 block_dim, std::size_t dynamic_shared, dim3 clusters, const void* function,
              const char* kernel, const std::function<void()>& body) {
  const std::uint64_t threads = std::uint64_t(block_dim.x) * block_dim.y * block_dim.z;
  const std::uint64_t blocks = std::uint64_t(grid.x) * grid.y * grid.z;
  const bool valid = grid.x >= 1 && grid.x <= 0x7fffffffu && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 &&
                     grid.z <= 65535 && threads >= 1 && threads <= 1024 && block_dim.z <= 64;
  const auto opted = max_dynamic_shared.find(function);
  const std::size_t dynamic_limit = opted == max_dynamic_shared.end() ? kSharedBytes : opted->second;
  if (!valid) {
    last_error = cudaErrorInvalidConfiguration;
    return false;
  }
  if (dynamic_shared > dynamic_limit || dynamic_shared > optin_shared_bytes()) {  // as the GPU: "invalid argument"
    last_error = cudaErrorInvalidValue;
    return false;
  }
  if (!valid_clusters(grid, clusters, function)) return false;
  if (block) {
    fault("a kernel launched another");
    return false;
  }
  const std::uint64_t cluster_size = std::uint64_t(clusters.x) * clusters.y * clusters.z;
  const std::uint64_t cluster_count = blocks / cluster_size;
  // Only the last clusters, in linear order, when a test asks (gmk_emu_run_last_clusters).
  const std::uint64_t first = last_clusters > 0 && last_clusters < cluster_count ? cluster_count - last_clusters : 0;
  if ((cluster_count - first) * cluster_size * threads > kMaxThreadsPerLaunch) {
    fault("launch of %llu blocks x %llu threads: too large for the emulator (keep test shapes small)",
          static_cast<unsigned long long>((cluster_count - first) * cluster_size),
          static_cast<unsigned long long>(threads));
    return false;
  }
  launched += kernel;
  if (cluster_size > 1)
    launched += " [clusters " + std::to_string(clusters.x) + "x" + std::to_string(clusters.y) + "x" +
                std::to_string(clusters.z) + "]";
  launched += '\n';
  launch_dynamic_shared = dynamic_shared;
  launch_shared_top = (dynamic_shared + 15) / 16 * 16;
  // Without the opt-in, static + dynamic bytes are at most 48 KB (the attribute's default is 48 KB less
  // the static bytes); with it, the attribute bounds the dynamic bytes and the device the sum.
  launch_shared_limit = opted == max_dynamic_shared.end() ? kSharedBytes : optin_shared_bytes();
  gridDim = grid;
  blockDim = block_dim;
  std::vector<std::uint64_t> order(cluster_count - first);
  std::iota(order.begin(), order.end(), first);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(++launch_serial));
  const dim3 tiles(grid.x / clusters.x, grid.y / clusters.y, grid.z / clusters.z);  // clusters per grid axis
  install_signal_handlers();
  for (const std::uint64_t index : order) {
    const uint3 tile = {unsigned(index % tiles.x), unsigned(index / tiles.x % tiles.y),
                        unsigned(index / (std::uint64_t(tiles.x) * tiles.y))};
    Cluster c;
    c.blocks = std::vector<Block>(cluster_size);
    c.threads = unsigned(cluster_size * threads);
    for (unsigned rank = 0; rank < cluster_size; ++rank) {  // block_rank: x fastest within the cluster
      const uint3 at = {tile.x * clusters.x + rank % clusters.x, tile.y * clusters.y + rank / clusters.x % clusters.y,
                        tile.z * clusters.z + rank / (clusters.x * clusters.y)};
      prepare_block(c.blocks[rank], body, block_dim, at, rank);
    }
    run_cluster(c);
  }
  restore_signal_handlers();
  return true;
}

// Clusters of the kernel (dynamic shared memory per block as config says) resident at once on the emulated
// device: multiprocessors x blocks per multiprocessor (by shared memory, 228 KB per multiprocessor with 1 KB
// reserved per block, and by threads, 2048) / cluster size. An upper bound: a GPU places a cluster within
// one GPC, which can leave multiprocessors unused.
cudaError_t max_active_clusters(const void* function, dim3 block_dim, std::size_t dynamic_shared, dim3 clusters,
                                int* count) {
  *count = 0;
  const auto opted = max_dynamic_shared.find(function);
  const std::size_t dynamic_limit = opted == max_dynamic_shared.end() ? kSharedBytes : opted->second;
  if (dynamic_shared > dynamic_limit) return cudaErrorInvalidValue;
  if (!valid_clusters(clusters, clusters, function)) return cudaGetLastError();
  const std::uint64_t threads = std::uint64_t(block_dim.x) * block_dim.y * block_dim.z;
  if (threads == 0 || threads > 1024) return cudaErrorInvalidConfiguration;
  const std::uint64_t per_sm = std::min<std::uint64_t>(228 * 1024 / (dynamic_shared + 1024), 2048 / threads);
  const std::uint64_t size = std::uint64_t(clusters.x) * clusters.y * clusters.z;
  *count = static_cast<int>(std::uint64_t(device.multiprocessors) * per_sm / size);
  return cudaSuccess;
}

}  // namespace gmk_emu

cudaError_t cudaGetLastError() {
  const cudaError_t error = gmk_emu::last_error;
  gmk_emu::last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return gmk_emu::last_error; }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attribute) {
    case cudaDevAttrComputeCapabilityMajor: *value = gmk_emu::device.major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = gmk_emu::device.minor; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = gmk_emu::device.multiprocessors; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(gmk_emu::kSharedBytes); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(gmk_emu::optin_shared_bytes()); return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorInvalidClusterSize: return "cluster misconfiguration";
  }
  return "unknown error";
}

// --- control from the tests ------------------------------------------------------------------------
extern "C" {

void gmk_emu_set_device(int major, int minor, int multiprocessors) {
  gmk_emu::device = {major, minor, multiprocessors};
}

// From now on, launches run only their last `count` clusters (blocks, without clusters) in linear block order;
// 0: every one. For tests of the index arithmetic of grids too large to run (sizes past 2^31).
void gmk_emu_run_last_clusters(int64_t count) { gmk_emu::last_clusters = count > 0 ? std::uint64_t(count) : 0; }

// The number of faults since the last call, and the first one's message in `message`.
int gmk_emu_take_faults(char* message, int size) {
  const int count = gmk_emu::fault_count;
  std::snprintf(message, std::size_t(size), "%s", gmk_emu::first_fault.c_str());
  gmk_emu::fault_count = 0;
  gmk_emu::first_fault.clear();
  return count;
}

// The kernels launched since the last call (their instantiations, one a line); returns the length.
int gmk_emu_take_launches(char* out, int size) {
  std::snprintf(out, std::size_t(size), "%s", gmk_emu::launched.c_str());
  const int length = int(gmk_emu::launched.size());
  gmk_emu::launched.clear();
  return length;
}

}  // extern "C"
