// The emulator's runtime (see shim.h for the execution model): the emulated device, launches,
// the fiber scheduler of a block, barriers, warp exchanges, shared memory and faults.
#include <signal.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
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
cudaError_t last_error = cudaSuccess;
int fault_count = 0;
std::string first_fault;
std::string launched;  // the kernels launched since the last gmk_emu_take_launches, one a line
std::uint64_t launch_serial = 0;
std::uint64_t block_serial = 0;

enum class State { Ready, AtBarrier, AtWarp, Done };

struct Fiber {
  ucontext_t context;
  State state = State::Ready;
  uint3 thread{0, 0, 0};
  unsigned linear = 0;
};

// The block being run.
struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  unsigned current = 0, done = 0, at_barrier = 0;
  std::uint64_t barrier_generation = 0;            // __syncthreads completed
  std::vector<unsigned> at_warp;                   // per warp: threads waiting in warp_sync
  std::vector<std::uint64_t> warp_phase;           // per warp: warp_syncs completed
  std::vector<unsigned char> warp_memo;            // per warp: kWarpMemoBytes
  std::vector<unsigned char> slots;                // per thread: 16 bytes for warp exchanges
  std::size_t shared_top = 0;     // the end of the variables placed so far (dynamic memory first)
  std::size_t shared_limit = 0;   // static + dynamic bytes the launch may use
};

Block* block = nullptr;
std::vector<std::unique_ptr<char[]>> stacks;
alignas(256) unsigned char shared_arena[kArenaBytes];
std::size_t launch_dynamic_shared = 0, launch_shared_limit = kSharedBytes;

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
  if (block->at_barrier > 0)
    fault("block (%u, %u, %u): thread %u exited while %u threads wait at __syncthreads", blockIdx.x, blockIdx.y,
          blockIdx.z, fiber.linear, block->at_barrier);
  // Returning resumes uc_link, the scheduler.
}

// Runs every thread of the block to completion; passes alternate ascending and descending order.
void run_block(const std::function<void()>& body, dim3 block_dim) {
  const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
  Block b;
  b.fibers.resize(threads);
  b.body = &body;
  b.at_warp.assign((threads + 31) / 32, 0);
  b.warp_phase.assign((threads + 31) / 32, 0);
  b.warp_memo.assign((threads + 31) / 32 * kWarpMemoBytes, 0);
  b.slots.assign(std::size_t(threads) * 16, 0);
  b.shared_top = (launch_dynamic_shared + 15) / 16 * 16;
  b.shared_limit = launch_shared_limit;
  block = &b;
  ++block_serial;
  std::memset(shared_arena, 0xff, b.shared_limit);  // NaN in every float type
  while (stacks.size() < threads) stacks.emplace_back(new char[kStackBytes]);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.linear = t;
    f.thread = {t % block_dim.x, t / block_dim.x % block_dim.y, t / (block_dim.x * block_dim.y)};
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks[t].get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  // A pass runs the block from one __syncthreads to the next: warp after warp, each warp's threads in
  // turn until every one waits at the barrier or has exited (warp-collective operations synchronise
  // the warp only). Passes alternate ascending and descending order.
  const unsigned warps = (threads + 31) / 32;
  for (unsigned pass = 0; b.done < threads; ++pass) {
    const bool ascending = pass % 2 == 0;
    const std::uint64_t generation = b.barrier_generation;
    bool progressed = false;
    for (unsigned i = 0; i < warps && b.barrier_generation == generation; ++i) {
      const unsigned warp = ascending ? i : warps - 1 - i, lanes = warp_size_of(warp);
      for (bool ran = true; ran && b.barrier_generation == generation;) {
        ran = false;
        for (unsigned j = 0; j < lanes && b.barrier_generation == generation; ++j) {
          const unsigned t = warp * 32 + (ascending ? j : lanes - 1 - j);
          if (b.fibers[t].state != State::Ready) continue;
          b.current = t;
          threadIdx = b.fibers[t].thread;
          swapcontext(&b.scheduler, &b.fibers[t].context);
          ran = progressed = true;
        }
      }
    }
    if (!progressed) {  // the waiting threads' stacks are abandoned
      fault("block (%u, %u, %u): deadlock: %u threads wait at __syncthreads, %u in a warp-collective operation, "
            "%u exited", blockIdx.x, blockIdx.y, blockIdx.z, b.at_barrier,
            std::accumulate(b.at_warp.begin(), b.at_warp.end(), 0u), b.done);
      break;
    }
  }
  block = nullptr;
}

// A thread that dies (__trap, a memory fault) never resumes; the others may then deadlock.
[[noreturn]] void kill_thread() {
  Fiber& fiber = self();
  fiber.state = State::Done;
  ++block->done;
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
    return shared_arena;
  }
  if (tag.block_serial != block_serial) {  // the block's first thread to reach the declaration
    const std::size_t offset = (block->shared_top + alignment - 1) / alignment * alignment;
    const std::size_t static_bytes = offset + bytes - (launch_dynamic_shared + 15) / 16 * 16;
    if (static_bytes > kSharedBytes || offset + bytes > block->shared_limit) {
      fault("__shared__ variables need %zu bytes (%zu dynamic), more than the %zu static or %zu in all of a block",
            offset + bytes, launch_dynamic_shared, kSharedBytes, block->shared_limit);
      return shared_arena;
    }
    tag.block_serial = block_serial;
    tag.offset = offset;
    block->shared_top = offset + bytes;
  }
  return shared_arena + tag.offset;
}

void* dynamic_shared(std::size_t alignment) {
  if (!block) fault("extern __shared__ variable outside a kernel");
  if (alignment > 256) fault("extern __shared__ alignment %zu is over the arena's 256", alignment);
  return shared_arena;
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
      return value == 0 || value == 1 ? cudaSuccess : cudaErrorInvalidValue;
  }
  return cudaErrorInvalidValue;
}

bool run_grid(dim3 grid, dim3 block_dim, std::size_t dynamic_shared, const void* function, const char* kernel,
              const std::function<void()>& body) {
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
  if (block) {
    fault("a kernel launched another");
    return false;
  }
  if (blocks * threads > kMaxThreadsPerLaunch) {
    fault("launch of %llu blocks x %llu threads: too large for the emulator (keep test shapes small)",
          static_cast<unsigned long long>(blocks), static_cast<unsigned long long>(threads));
    return false;
  }
  launched += kernel;
  launched += '\n';
  launch_dynamic_shared = dynamic_shared;
  // Without the opt-in, static + dynamic bytes are at most 48 KB (the attribute's default is 48 KB less
  // the static bytes); with it, the attribute bounds the dynamic bytes and the device the sum.
  launch_shared_limit = opted == max_dynamic_shared.end() ? kSharedBytes : optin_shared_bytes();
  gridDim = grid;
  blockDim = block_dim;
  std::vector<std::uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(++launch_serial));
  install_signal_handlers();
  for (const std::uint64_t b : order) {
    blockIdx = {unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (std::uint64_t(grid.x) * grid.y))};
    run_block(body, block_dim);
  }
  restore_signal_handlers();
  return true;
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
  }
  return "unknown error";
}

// --- control from the tests ------------------------------------------------------------------------
extern "C" {

void gmk_emu_set_device(int major, int minor, int multiprocessors) {
  gmk_emu::device = {major, minor, multiprocessors};
}

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
