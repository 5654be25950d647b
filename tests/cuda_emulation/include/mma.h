// Stand-in for CUDA's <mma.h> in the CPU emulation: everything is in shim.h.
#pragma once
#include "../shim.h"
