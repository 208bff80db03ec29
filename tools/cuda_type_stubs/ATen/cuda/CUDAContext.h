// Type-checking stub (not the real header): the declarations bindings.cpp uses.
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime.h>
namespace at { namespace cuda { cudaStream_t getCurrentCUDAStream(); } }
