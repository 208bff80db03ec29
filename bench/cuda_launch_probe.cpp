// The CUDA extension's own launch code (csrc/cuda/stages.cu's launchers) run without a GPU: linked
// against this stub of the CUDA runtime (nvcc -cudart none), every kernel launch prints its kernel,
// grid and block instead of running. bench/static.py builds it with csrc/cuda/stages.cu and feeds
// it stage calls on stdin, one per line:
//   <stage> <dtype> <rows> <cols> <act> <normalize> <detach>
// stage: act_fwd | mix_fwd | mix_bwd | act_bwd | add_skip_grad; dtype: f32 | f64 | f16 | bf16;
// cols: P (act_*), Q (mix_*) or n (add_skip_grad). Output, one line per launch:
//   launch <mangled kernel> <grid.x> <grid.y> <grid.z> <block.x> <block.y> <block.z>
// The SM count the runtime reports is GRADRES_PROBE_SMS (default 132). Pointers are fake and never
// dereferenced on the host (the launchers read only shapes and alignment).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>

#include "stages.cuh"

namespace {
std::map<const void*, std::string>& names() {
  static std::map<const void*, std::string> m;
  return m;
}
dim3 g_grid, g_block;
size_t g_shared = 0;
}  // namespace

extern "C" {
void** __cudaRegisterFatBinary(void*) {
  static void* handle = nullptr;
  return &handle;
}
void __cudaRegisterFatBinaryEnd(void**) {}
void __cudaUnregisterFatBinary(void**) {}
void __cudaRegisterFunction(void**, const char* host_fun, char*, const char* device_name, int,
                            uint3*, uint3*, dim3*, dim3*, int*) {
  names()[host_fun] = device_name;
}
void __cudaRegisterVar(void**, char*, char*, const char*, int, size_t, int, int) {}
unsigned __cudaPushCallConfiguration(dim3 grid, dim3 block, size_t shared, void*) {
  g_grid = grid;
  g_block = block;
  g_shared = shared;
  return 0;
}
cudaError_t __cudaPopCallConfiguration(dim3* grid, dim3* block, size_t* shared, void*) {
  *grid = g_grid;
  *block = g_block;
  *shared = g_shared;
  return cudaSuccess;
}
cudaError_t cudaLaunchKernel(const void* func, dim3 grid, dim3 block, void**, size_t,
                             cudaStream_t) {
  const auto it = names().find(func);
  std::printf("launch %s %u %u %u %u %u %u\n",
              it == names().end() ? "?" : it->second.c_str(), grid.x, grid.y, grid.z, block.x,
              block.y, block.z);
  return cudaSuccess;
}
// CUDA 13's launch path (crt/host_runtime.h): a kernel handle per stub, then __cudaLaunchKernel.
cudaError_t __cudaGetKernel(cudaKernel_t* kernel, const void* func) {
  *kernel = reinterpret_cast<cudaKernel_t>(const_cast<void*>(func));
  return cudaSuccess;
}
cudaError_t __cudaLaunchKernel(cudaKernel_t kernel, dim3 grid, dim3 block, void** args,
                               size_t shared, cudaStream_t stream) {
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, args, shared,
                          stream);
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  const char* sms = std::getenv("GRADRES_PROBE_SMS");
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = sms ? std::atoi(sms) : 132; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    default: *value = 0;
  }
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "stub runtime"; }
const char* cudaGetErrorName(cudaError_t) { return "stub runtime"; }
}

namespace {
using namespace gradres;
using namespace gradres::cuda;

// Distinct, 256-byte-aligned fake addresses (the launchers test 16-byte alignment).
const void* fake(int i) { return reinterpret_cast<const void*>(uintptr_t(0x100000) * (i + 1)); }
void* fake_mut(int i) { return const_cast<void*>(fake(i)); }

template <typename T>
void call(const std::string& stage, int64_t rows, int64_t cols, Act act, bool normalize,
          bool detach) {
  if (stage == "act_fwd") {
    act_fwd<T>(ActFwdParams{fake(0), fake(1), fake_mut(2), fake_mut(3), rows, cols, act},
               nullptr);
  } else if (stage == "mix_fwd") {
    MixFwdParams p{};
    p.f = fake_mut(0); p.g = fake_mut(1); p.x = fake(2); p.alpha = fake(3); p.r = fake_mut(4);
    p.rows = rows; p.Q = cols; p.eps = 1e-6; p.normalize = normalize;
    mix_fwd<T>(p, fake_mut(5), nullptr);
  } else if (stage == "mix_bwd") {
    MixBwdParams p{};
    p.y_bar = fake(0); p.g_hat = fake(1); p.x = fake(2); p.r = fake(3); p.alpha = fake(4);
    p.g_bar = detach ? nullptr : fake_mut(5); p.alpha_bar = fake_mut(6); p.x_bar = fake_mut(7);
    p.rows = rows; p.Q = cols; p.normalize = normalize; p.detach = detach; p.set_x_bar = false;
    mix_bwd<T>(p, fake_mut(8), nullptr);
  } else if (stage == "act_bwd") {
    ActBwdParams p{};
    p.z = fake(0); p.a_bar = fake(1); p.d_bar = detach ? nullptr : fake(2); p.s = fake(3);
    p.z_bar = fake_mut(4); p.d = detach ? nullptr : fake_mut(5); p.zbar_colsum = fake_mut(6);
    p.s_bar = detach ? nullptr : fake_mut(7);
    p.rows = rows; p.P = cols; p.act = act; p.detach = detach;
    act_bwd<T>(p, fake_mut(8), nullptr);
  } else if (stage == "add_skip_grad") {
    AddSkipGradParams p{};
    p.out = fake_mut(0); p.y_bar = fake(1); p.alpha = fake(2); p.n = rows * cols;
    add_skip_grad<T>(p, nullptr);
  } else {
    std::fprintf(stderr, "cuda_launch_probe: unknown stage %s\n", stage.c_str());
    std::exit(2);
  }
}
}  // namespace

int main() {
  std::string stage, dtype;
  long long rows, cols;
  int act, normalize, detach;
  while (std::cin >> stage >> dtype >> rows >> cols >> act >> normalize >> detach) {
    std::printf("call %s %s %lld %lld\n", stage.c_str(), dtype.c_str(), rows, cols);
    const Act a = static_cast<Act>(act);
    if (dtype == "f32") call<float>(stage, rows, cols, a, normalize, detach);
    else if (dtype == "f64") call<double>(stage, rows, cols, a, normalize, detach);
    else if (dtype == "f16") call<__half>(stage, rows, cols, a, normalize, detach);
    else if (dtype == "bf16") call<__nv_bfloat16>(stage, rows, cols, a, normalize, detach);
    else { std::fprintf(stderr, "cuda_launch_probe: unknown dtype %s\n", dtype.c_str()); return 2; }
    std::fflush(stdout);
  }
  return 0;
}
