// gradres_fused C++ ops: schemas, and the block-family glue around the fused stages.
//
// GEMMs and convolutions go through ATen (MKL/oneDNN on CPU, cuBLAS/cuDNN on CUDA); everything
// between them runs in the fused passes of epilogues.h. The same glue serves CPU and CUDA: the
// stages dispatch on the tensors' device. Autograd and fake (meta) kernels are registered from
// Python (gradres_fused/cpp.py): the forward's backward is the fused *_bwd op, whose own backward
// is the composite implementation.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "epilogues.h"

namespace gradres {
namespace {

using Tensor5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Act parse_act(c10::string_view name) {
  for (int i = 0; i < kNumActs; ++i)
    if (name == kActNames[i]) return static_cast<Act>(i);
  TORCH_CHECK_VALUE(false, "activation: expected one of relu, gelu, gelu_tanh, silu, tanh, sin; got '",
                    std::string(name), "'");
}

void check_same(const Tensor& x, const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == x.device(), name, ": expected a tensor on ", x.device(),
                    " like x, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, ": expected dtype ",
                   x.scalar_type(), " like x, got ", t.scalar_type());
}

void check_inputs(const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
                  const Tensor& w2, const c10::optional<Tensor>& b2, const Tensor& alpha) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x: expected a floating tensor, got ",
                   x.scalar_type());
  check_same(x, w1, "w1");
  check_same(x, w2, "w2");
  if (b1) check_same(x, *b1, "b1");
  if (b2) check_same(x, *b2, "b2");
  check_same(x, alpha, "alpha");
  TORCH_CHECK_VALUE(alpha.numel() == 1, "alpha: expected one element, got ", alpha.sizes());
}

// A (rows, cols) view of a contiguous tensor whose leading dim is the sample (cols stays right
// for an empty batch, where the column sums must still cover every column).
Tensor rows_view(const Tensor& t) {
  return t.view({t.size(0), c10::multiply_integers(t.sizes().slice(1))});
}

// The backward ops read z, ĝ, r, ȳ by raw pointer: check what the forward would have produced.
void check_bwd_inputs(const Tensor& y_bar, const Tensor& x, const Tensor& w1, const Tensor& w2,
                      const Tensor& alpha, const Tensor& z, const Tensor& a, const Tensor& g_hat,
                      const Tensor& r, bool normalize) {
  check_inputs(x, w1, c10::nullopt, w2, c10::nullopt, alpha);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{y_bar, "y_bar"},
                                {z, "z"}, {a, "a"}, {g_hat, "g_hat"}, {r, "r"}})
    check_same(x, t, name);
  TORCH_CHECK_VALUE(y_bar.sizes() == x.sizes() && g_hat.sizes() == x.sizes(),
                    "y_bar, g_hat: expected the shape of x ", x.sizes(), ", got ", y_bar.sizes(),
                    " and ", g_hat.sizes());
  auto z_sizes = x.sizes().vec();
  z_sizes[1] = w1.size(0);
  TORCH_CHECK_VALUE(z.sizes() == c10::IntArrayRef(z_sizes), "z: expected shape ",
                    c10::IntArrayRef(z_sizes), " (the forward's pre-activation), got ", z.sizes());
  TORCH_CHECK_VALUE(a.sizes() == z.sizes(), "a: expected the shape of z ", z.sizes(), ", got ",
                    a.sizes());
  TORCH_CHECK_VALUE(r.dim() == 1 && r.size(0) == (normalize ? x.size(0) : 0) ,
                    "r: expected shape (", normalize ? x.size(0) : 0, ",), got ", r.sizes());
}

void check_mlp_shapes(const Tensor& x, const Tensor& w1, const Tensor& w2) {
  TORCH_CHECK_VALUE(x.dim() == 2 && w1.dim() == 2 && w2.dim() == 2 && w1.size(1) == x.size(1) &&
                        w2.size(0) == x.size(1) && w2.size(1) == w1.size(0),
                    "mlp: expected x (N, D), w1 (H, D), w2 (D, H); got ", x.sizes(), ", ",
                    w1.sizes(), ", ", w2.sizes());
}

// The backward's tensor arguments, checked and made contiguous.
struct BwdInputs {
  Tensor y_bar, x, w1, w2, z, a, g_hat, r;
};

BwdInputs prepare_bwd(const Tensor& y_bar, const Tensor& x, const Tensor& w1, const Tensor& w2,
                      const Tensor& alpha, const Tensor& z, const Tensor& a, const Tensor& g_hat,
                      const Tensor& r, bool normalize) {
  check_bwd_inputs(y_bar, x, w1, w2, alpha, z, a, g_hat, r, normalize);
  return {y_bar.contiguous(), x.contiguous(), w1.contiguous(), w2.contiguous(),
          z.contiguous(),     a.contiguous(), g_hat.contiguous(), r.contiguous()};
}

Tensor empty_r(const Tensor& x, bool normalize) {
  return at::empty({normalize ? x.size(0) : 0}, x.options());
}

// ---------------------------------------------------------------------------------------------
// MLP: x (N, D), w1 (H, D), w2 (D, H). Returns y and what the backward needs: z, a = φ(z)
// (kept rather than recomputed: the W̄2 GEMM reads it, and plain autograd keeps it too), ĝ, r.
Tensor5 mlp_fwd(const Tensor& x_, const Tensor& w1_, const c10::optional<Tensor>& b1,
                const Tensor& w2_, const c10::optional<Tensor>& b2, const Tensor& alpha,
                c10::string_view activation, bool normalize, double eps, bool /*detach*/) {
  check_inputs(x_, w1_, b1, w2_, b2, alpha);
  check_mlp_shapes(x_, w1_, w2_);
  const Act act = parse_act(activation);
  const Tensor x = x_.contiguous(), w1 = w1_.contiguous(), w2 = w2_.contiguous();
  Tensor z = b1 ? at::addmm(*b1, x, w1.t()) : at::mm(x, w1.t());
  const Tensor s = w2.sum(0);
  Tensor a = at::empty_like(z), d = at::empty_like(z);
  act_fwd(z, s, act, a, d);
  Tensor y = b2 ? at::addmm(*b2, a, w2.t()) : at::mm(a, w2.t());  // F; becomes y in place
  Tensor g = at::mm(d, w1);                                          // g; becomes ĝ in place
  Tensor r = empty_r(x, normalize);
  mix_fwd(y, g, x, alpha, normalize, eps, r);
  return {y, z, a, g, r};
}

// Backward of DESIGN §2 for the MLP. Returns (x̄, W̄1, b̄1, W̄2, b̄2, ᾱ); b̄1, b̄2 always computed.
Tensor6 mlp_bwd(const Tensor& y_bar_, const Tensor& x_, const Tensor& w1_,
                const c10::optional<Tensor>& /*b1: for autograd only*/, const Tensor& w2_,
                const Tensor& alpha, const Tensor& z_, const Tensor& a_, const Tensor& g_hat_,
                const Tensor& r_, c10::string_view activation, bool normalize,
                double /*eps: for autograd only*/, bool detach) {
  const Act act = parse_act(activation);
  check_mlp_shapes(x_, w1_, w2_);
  const auto [y_bar, x, w1, w2, z, a, g_hat, r] =
      prepare_bwd(y_bar_, x_, w1_, w2_, alpha, z_, a_, g_hat_, r_, normalize);
  const int64_t N = x.size(0), D = x.size(1), H = w1.size(0);
  // Stacked operands of the one W̄1 GEMM: [z̄; d]ᵀ [x; ḡ] (detach mode: z̄ᵀ x).
  Tensor xs = detach ? x : at::empty({2 * N, D}, x.options());
  Tensor zs = at::empty({detach ? N : 2 * N, H}, x.options());
  Tensor g_bar = detach ? Tensor() : xs.narrow(0, N, N);
  Tensor x_copy = detach ? Tensor() : xs.narrow(0, 0, N);
  Tensor alpha_bar = at::empty_like(alpha);
  Tensor no_x_bar;
  if (!detach) mix_bwd(y_bar, g_hat, x, r, alpha, normalize, detach, g_bar, x_copy, alpha_bar,
                       no_x_bar);

  const Tensor a_bar = at::mm(y_bar, w2);
  const Tensor d_bar = detach ? Tensor() : at::mm(g_bar, w1.t());
  const Tensor s = w2.sum(0);
  Tensor z_bar = zs.narrow(0, 0, N);
  Tensor d = detach ? Tensor() : zs.narrow(0, N, N);
  Tensor b1_bar = at::empty({H}, x.options());
  Tensor s_bar = detach ? Tensor() : at::empty({H}, x.options());
  act_bwd(z, a_bar, d_bar, s, act, detach, z_bar, d, b1_bar, s_bar);

  Tensor w2_bar = at::mm(y_bar.t(), a);
  if (!detach) w2_bar.add_(s_bar.unsqueeze(0));  // s = W2ᵀ1: every row of W2 gets s̄
  Tensor b2_bar = y_bar.sum(0);
  Tensor w1_bar = at::mm(zs.t(), xs);
  Tensor x_bar = at::mm(z_bar, w1);
  if (detach)  // ᾱ and x̄ += (1 − m)ȳ in one pass over ȳ
    mix_bwd(y_bar, g_hat, x, r, alpha, normalize, detach, g_bar, x_copy, alpha_bar, x_bar);
  else
    add_skip_grad(x_bar, y_bar, alpha);
  return {x_bar, w1_bar, b1_bar, w2_bar, b2_bar, alpha_bar};
}

// ---------------------------------------------------------------------------------------------
// Conv: x (N, C, H, W), w1 (Cm, C, k1h, k1w), w2 (C, Cm, k2h, k2w), odd kernels, 'same' padding.
std::vector<int64_t> same_pad(const Tensor& w) { return {w.size(2) / 2, w.size(3) / 2}; }

Tensor conv(const Tensor& t, const Tensor& w, const c10::optional<Tensor>& b, bool transposed) {
  return at::convolution(t, w, b, {1, 1}, same_pad(w), {1, 1}, transposed, {0, 0}, 1);
}

// R[u, i] = 1 where kernel tap u reaches output row i: 0 ≤ i − u + k/2 < n.
Tensor border(int64_t k, int64_t n, const Tensor& like) {
  auto u = at::arange(k, like.options().dtype(at::kLong)).unsqueeze(1);
  auto i = at::arange(n, like.options().dtype(at::kLong)).unsqueeze(0);
  auto o = i - u + k / 2;
  return ((o >= 0) & (o < n)).to(like.scalar_type());
}

// S[c,i,j] = Σ_{u,v} W2.sum(0)[c,u,v] R[u,i] Q[v,j]: ∂ΣF/∂a, independent of x.
Tensor smap(const Tensor& w2, int64_t h, int64_t w) {
  return at::einsum("cuv,ui,vj->cij", {w2.sum(0), border(w2.size(2), h, w2), border(w2.size(3), w, w2)});
}

// W̄2[o,c,u,v] += Σ_{i,j} S̄[c,i,j] R[u,i] Q[v,j] for every o.
Tensor smap_adjoint(const Tensor& s_bar, const Tensor& w2) {
  return at::einsum("cij,ui,vj->cuv", {s_bar, border(w2.size(2), s_bar.size(1), w2),
                                       border(w2.size(3), s_bar.size(2), w2)});
}

void check_conv_shapes(const Tensor& x, const Tensor& w1, const Tensor& w2) {
  TORCH_CHECK_VALUE(x.dim() == 4 && w1.dim() == 4 && w2.dim() == 4 && w1.size(1) == x.size(1) &&
                        w2.size(0) == x.size(1) && w2.size(1) == w1.size(0),
                    "conv: expected x (N, C, H, W), w1 (Cm, C, k, k), w2 (C, Cm, k, k); got ",
                    x.sizes(), ", ", w1.sizes(), ", ", w2.sizes());
  for (const Tensor* w : {&w1, &w2})
    TORCH_CHECK_VALUE(w->size(2) % 2 == 1 && w->size(3) % 2 == 1,
                      "conv: expected odd kernel sizes, got ", w->sizes());
}

Tensor5 conv_fwd(const Tensor& x_, const Tensor& w1_, const c10::optional<Tensor>& b1,
                 const Tensor& w2_, const c10::optional<Tensor>& b2, const Tensor& alpha,
                 c10::string_view activation, bool normalize, double eps, bool /*detach*/) {
  check_inputs(x_, w1_, b1, w2_, b2, alpha);
  check_conv_shapes(x_, w1_, w2_);
  const Act act = parse_act(activation);
  const Tensor x = x_.contiguous(), w1 = w1_.contiguous(), w2 = w2_.contiguous();
  Tensor z = conv(x, w1, b1, false).contiguous();
  const Tensor s = smap(w2, x.size(2), x.size(3)).contiguous().view({-1});
  Tensor a = at::empty_like(z), d = at::empty_like(z);
  Tensor zv = rows_view(z), av = rows_view(a), dv = rows_view(d);
  act_fwd(zv, s, act, av, dv);
  Tensor y = conv(a, w2, b2, false).contiguous();
  Tensor g = conv(d, w1, c10::nullopt, true).contiguous();
  Tensor r = empty_r(x, normalize);
  Tensor yv = rows_view(y), gv = rows_view(g);
  mix_fwd(yv, gv, rows_view(x), alpha, normalize, eps, r);
  return {y, z, a, g, r};
}

Tensor6 conv_bwd(const Tensor& y_bar_, const Tensor& x_, const Tensor& w1_,
                 const c10::optional<Tensor>& /*b1: for autograd only*/, const Tensor& w2_,
                 const Tensor& alpha, const Tensor& z_, const Tensor& a_, const Tensor& g_hat_,
                 const Tensor& r_, c10::string_view activation, bool normalize,
                 double /*eps: for autograd only*/, bool detach) {
  const Act act = parse_act(activation);
  check_conv_shapes(x_, w1_, w2_);
  const auto [y_bar, x, w1, w2, z, a, g_hat, r] =
      prepare_bwd(y_bar_, x_, w1_, w2_, alpha, z_, a_, g_hat_, r_, normalize);
  const int64_t N = x.size(0), Cm = w1.size(0), H = x.size(2), W = x.size(3);
  auto stacked = [&](const Tensor& like) {
    auto sizes = like.sizes().vec();
    sizes[0] *= 2;
    return at::empty(sizes, like.options());
  };
  Tensor xs = detach ? x : stacked(x);
  Tensor zs = detach ? at::empty_like(z) : stacked(z);
  Tensor g_bar = detach ? Tensor() : xs.narrow(0, N, N);
  Tensor x_copy = detach ? Tensor() : xs.narrow(0, 0, N);
  Tensor alpha_bar = at::empty_like(alpha);
  Tensor gbv = detach ? Tensor() : rows_view(g_bar), xcv = detach ? Tensor() : rows_view(x_copy);
  Tensor no_x_bar;
  if (!detach)
    mix_bwd(rows_view(y_bar), rows_view(g_hat), rows_view(x), r, alpha, normalize, detach, gbv,
            xcv, alpha_bar, no_x_bar);
  const Tensor a_bar = conv(y_bar, w2, c10::nullopt, true).contiguous();
  const Tensor d_bar = detach ? Tensor() : conv(g_bar, w1, c10::nullopt, false).contiguous();
  const Tensor s = smap(w2, H, W).contiguous().view({-1});
  Tensor z_bar = zs.narrow(0, 0, N);
  Tensor d = detach ? Tensor() : zs.narrow(0, N, N);
  Tensor zbar_colsum = at::empty({Cm * H * W}, x.options());
  Tensor s_bar = detach ? Tensor() : at::empty({Cm * H * W}, x.options());
  {
    Tensor zbv = rows_view(z_bar), dv = detach ? Tensor() : rows_view(d);
    act_bwd(rows_view(z), rows_view(a_bar), detach ? Tensor() : rows_view(d_bar), s, act, detach,
            zbv, dv, zbar_colsum, s_bar);
  }
  const std::vector<int64_t> b2_sizes = {w2.size(0)};
  auto grads2 = at::convolution_backward(y_bar, a, w2, b2_sizes, {1, 1}, same_pad(w2), {1, 1},
                                         false, {0, 0}, 1, {false, true, true});
  Tensor w2_bar = std::get<1>(grads2), b2_bar = std::get<2>(grads2);
  if (!detach) w2_bar.add_(smap_adjoint(s_bar.view({Cm, H, W}), w2).unsqueeze(0));
  Tensor w1_bar = std::get<1>(at::convolution_backward(zs, xs, w1, c10::nullopt, {1, 1},
                                                       same_pad(w1), {1, 1}, false, {0, 0}, 1,
                                                       {false, true, false}));
  Tensor b1_bar = zbar_colsum.view({Cm, H * W}).sum(1);
  Tensor x_bar = conv(z_bar, w1, c10::nullopt, true).contiguous();
  if (detach) {  // ᾱ and x̄ += (1 − m)ȳ in one pass over ȳ
    Tensor xbv = rows_view(x_bar);
    mix_bwd(rows_view(y_bar), rows_view(g_hat), rows_view(x), r, alpha, normalize, detach, gbv,
            xcv, alpha_bar, xbv);
  } else {
    add_skip_grad(x_bar, y_bar, alpha);
  }
  return {x_bar, w1_bar, b1_bar, w2_bar, b2_bar, alpha_bar};
}

}  // namespace
}  // namespace gradres

// The forward returns y and the intermediates its backward reads (z, a, ĝ, r); `detach` only
// selects that backward. The backward takes b1 and eps although its kernels do not read them: its own
// (composite) backward recomputes z = L1(x) + b1 and r from them.
TORCH_LIBRARY(gradres_fused, m) {
  for (const char* fam : {"mlp", "conv"}) {
    m.def((std::string(fam) +
          "_fwd(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor alpha, "
          "str activation, bool normalize, float eps, bool detach) "
          "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
              .c_str());
    m.def((std::string(fam) +
          "_bwd(Tensor y_bar, Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor alpha, "
          "Tensor z, Tensor a, Tensor g_hat, Tensor r, str activation, bool normalize, "
          "float eps, "
          "bool detach) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
              .c_str());
  }
}

TORCH_LIBRARY_IMPL(gradres_fused, CPU, m) {
  m.impl("mlp_fwd", &gradres::mlp_fwd);
  m.impl("mlp_bwd", &gradres::mlp_bwd);
  m.impl("conv_fwd", &gradres::conv_fwd);
  m.impl("conv_bwd", &gradres::conv_bwd);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gradres_fused, CUDA, m) {
  m.impl("mlp_fwd", &gradres::mlp_fwd);
  m.impl("mlp_bwd", &gradres::mlp_bwd);
  m.impl("conv_fwd", &gradres::conv_fwd);
  m.impl("conv_bwd", &gradres::conv_bwd);
}
#endif

// A Python module so `import gradres_fused._C` loads the library (and its registrations).
#include <Python.h>
static struct PyModuleDef gradres_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&gradres_module); }
