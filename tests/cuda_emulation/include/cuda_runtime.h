// Stand-in for CUDA's <cuda_runtime.h> in the CPU emulation: everything is in shim.h.
#pragma once
#include "../shim.h"
