// The fused stages of stages.h on CUDA (CudaStages): fill each stage's parameter struct
// (../stage_params.h) from ATen tensors, take scratch from the caching allocator, and launch the
// torch-free kernels of stages.cu on the current stream; registered
// with the dispatcher as the ops' CUDA kernels, through the block glue of blocks.h. Compiled only
// in a CUDAExtension build (WITH_CUDA).
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../blocks.h"
#include "../stages.h"
#include "stages.cuh"

namespace gradres {
namespace {

template <typename S> struct CudaType { using type = S; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

// The dtype of cuda::Red<T>, for the reductions' scratch: float64 for float32 and float64 inputs.
at::ScalarType red_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat ? at::kDouble : at::kFloat;
}

#define GRADRES_CUDA_FLOATS(t, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), name, __VA_ARGS__)

}  // namespace

void CudaStages::act_fwd(const Tensor& z, const Tensor& s, Act act, Tensor& a, Tensor& d) {
  RECORD_FUNCTION("gradres::act_fwd", std::vector<c10::IValue>());
  c10::cuda::CUDAGuard device_guard(z.device());
  const ActFwdParams p{z.data_ptr(), s.data_ptr(), a.data_ptr(), d.data_ptr(), z.size(0),
                       z.size(1), act};
  GRADRES_CUDA_FLOATS(z, "gradres act_fwd_cuda", [&] {
    C10_CUDA_CHECK(cuda::act_fwd<typename CudaType<scalar_t>::type>(p, c10::cuda::getCurrentCUDAStream()));
  });
}

void CudaStages::mix_fwd(Tensor& f, Tensor& g, const Tensor& x, const Tensor& alpha,
                         bool normalize, double eps, Tensor& r) {
  RECORD_FUNCTION("gradres::mix_fwd", std::vector<c10::IValue>());
  c10::cuda::CUDAGuard device_guard(f.device());
  Tensor scratch = at::empty({cuda::row_scratch_elems(f.size(0), f.size(1))},
                             f.options().dtype(red_type(f)));
  const MixFwdParams p{f.data_ptr(), g.data_ptr(), x.data_ptr(), alpha.data_ptr(),
                       normalize ? r.data_ptr() : nullptr, f.size(0), f.size(1), eps, normalize};
  GRADRES_CUDA_FLOATS(f, "gradres mix_fwd_cuda", [&] {
    C10_CUDA_CHECK(cuda::mix_fwd<typename CudaType<scalar_t>::type>(p, scratch.data_ptr(),
                                                                    c10::cuda::getCurrentCUDAStream()));
  });
}

void CudaStages::mix_bwd(const Tensor& y_bar, const Tensor& g_hat, const Tensor& x,
                         const Tensor& r, const Tensor& alpha, bool normalize, bool detach,
                         Tensor& g_bar, Tensor& alpha_bar, Tensor& x_bar, bool set_x_bar) {
  RECORD_FUNCTION("gradres::mix_bwd", std::vector<c10::IValue>());
  TORCH_INTERNAL_ASSERT(!set_x_bar, "CUDA mix_bwd only adds to x_bar (kSeedsInputGrad)");
  c10::cuda::CUDAGuard device_guard(y_bar.device());
  Tensor scratch = at::empty({cuda::row_scratch_elems(y_bar.size(0), y_bar.size(1))},
                             y_bar.options().dtype(red_type(y_bar)));
  const MixBwdParams p{y_bar.data_ptr(), g_hat.data_ptr(), x.data_ptr(),
                       (normalize && !detach) ? r.data_ptr() : nullptr, alpha.data_ptr(),
                       detach ? nullptr : g_bar.data_ptr(), alpha_bar.data_ptr(), data_or_null(x_bar),
                       y_bar.size(0), y_bar.size(1), normalize, detach, false};
  GRADRES_CUDA_FLOATS(y_bar, "gradres mix_bwd_cuda", [&] {
    C10_CUDA_CHECK(cuda::mix_bwd<typename CudaType<scalar_t>::type>(p, scratch.data_ptr(),
                                                                    c10::cuda::getCurrentCUDAStream()));
  });
}

void CudaStages::act_bwd(const Tensor& z, const Tensor& a_bar, const Tensor& d_bar,
                         const Tensor& s, Act act, bool detach, Tensor& z_bar, Tensor& d,
                         Tensor& a, Tensor& zbar_colsum, Tensor& s_bar) {
  RECORD_FUNCTION("gradres::act_bwd", std::vector<c10::IValue>());
  c10::cuda::CUDAGuard device_guard(z.device());
  Tensor scratch = at::empty({cuda::act_bwd_scratch_elems(z.size(0), z.size(1), detach)},
                             z.options().dtype(red_type(z)));
  const ActBwdParams p{z.data_ptr(), a_bar.data_ptr(), detach ? nullptr : data_or_null(d_bar),
                       detach ? nullptr : s.data_ptr(), z_bar.data_ptr(),
                       detach ? nullptr : data_or_null(d), data_or_null(a),
                       zbar_colsum.data_ptr(), detach ? nullptr : data_or_null(s_bar), z.size(0),
                       z.size(1), act, detach};
  GRADRES_CUDA_FLOATS(z, "gradres act_bwd_cuda", [&] {
    C10_CUDA_CHECK(cuda::act_bwd<typename CudaType<scalar_t>::type>(p, scratch.data_ptr(),
                                                                    c10::cuda::getCurrentCUDAStream()));
  });
}

void CudaStages::add_skip_grad(Tensor& out, const Tensor& y_bar, const Tensor& alpha) {
  RECORD_FUNCTION("gradres::add_skip_grad", std::vector<c10::IValue>());
  c10::cuda::CUDAGuard device_guard(out.device());
  const AddSkipGradParams p{out.data_ptr(), y_bar.data_ptr(), alpha.data_ptr(), out.numel()};
  GRADRES_CUDA_FLOATS(out, "gradres add_skip_grad_cuda", [&] {
    C10_CUDA_CHECK(cuda::add_skip_grad<typename CudaType<scalar_t>::type>(p, c10::cuda::getCurrentCUDAStream()));
  });
}

Tensor CudaStages::conv_smap(const Tensor& w2_, int64_t H, int64_t W, at::MemoryFormat fmt) {
  RECORD_FUNCTION("gradres::smap", std::vector<c10::IValue>());
  c10::cuda::CUDAGuard device_guard(w2_.device());
  const Tensor w2 = w2_.contiguous();
  const int64_t C = w2.size(1);
  Tensor out = at::empty({C * H * W}, w2.options().dtype(at::toOpMathType(w2.scalar_type())));
  const SmapParams p{w2.data_ptr(), out.data_ptr(), w2.size(0), C, w2.size(2), w2.size(3), H, W,
                     fmt == at::MemoryFormat::ChannelsLast};
  GRADRES_CUDA_FLOATS(w2, "gradres smap_cuda", [&] {
    C10_CUDA_CHECK(cuda::smap<typename CudaType<scalar_t>::type>(
        p, c10::cuda::getCurrentCUDAStream()));
  });
  return out;
}

Tensor CudaStages::conv_smap_adjoint(const Tensor& s_bar_, int64_t C, int64_t H, int64_t W,
                                     int64_t kh, int64_t kw, at::MemoryFormat fmt) {
  RECORD_FUNCTION("gradres::smap_adjoint", std::vector<c10::IValue>());
  c10::cuda::CUDAGuard device_guard(s_bar_.device());
  const Tensor s_bar = s_bar_.contiguous();
  Tensor out = at::empty({C, kh, kw}, s_bar.options());
  const SmapAdjointParams p{s_bar.data_ptr(), out.data_ptr(), C, kh, kw, H, W,
                            fmt == at::MemoryFormat::ChannelsLast};
  // s_bar is float32 or float64 (the accumulation type): its dtype picks the kernel's.
  AT_DISPATCH_FLOATING_TYPES(s_bar.scalar_type(), "gradres smap_adjoint_cuda", [&] {
    C10_CUDA_CHECK(cuda::smap_adjoint<scalar_t>(p, c10::cuda::getCurrentCUDAStream()));
  });
  return out;
}

}  // namespace gradres

TORCH_LIBRARY_IMPL(gradres_fused, CUDA, m) {
  gradres::blocks::register_blocks<gradres::CudaStages>(m);
}
