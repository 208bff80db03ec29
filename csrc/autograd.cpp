// The forward ops' autograd, in C++ (the Autograd dispatch key, every device): the backward of
// `<fam>_fwd` is the fused `<fam>_bwd` op, called through the dispatcher so that its own autograd
// kernel — registered from Python (gradres_fused/fused_op.py: a VJP of the composite formulas) —
// records the graph of a second differentiation when the backward runs with create_graph.
//
// Why C++: torch.library.register_autograd's Python path (argument binding, default filling, the
// redispatch and a Python autograd.Function per call) cost ~0.1-0.15 ms per block and step, a
// 16-block EDSR step's dominant fixed cost after the convolutions. The triton backend's ops keep
// the Python registration; both follow the same contract (fused_op.py's docstring).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "blocks.h"

namespace gradres {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<Tensor>;

using FwdOp = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const OptTensor&,
    const Tensor&, c10::string_view, bool, double, bool);
using BwdOp = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, c10::string_view, bool, double,
    bool);

// The ops of one family, looked up once (the schemas are defined in ops.cpp).
struct FamilyOps {
  c10::TypedOperatorHandle<FwdOp> fwd;
  c10::TypedOperatorHandle<BwdOp> bwd;
};

const FamilyOps& family_ops(bool conv) {
  static const auto lookup = [](const char* fwd, const char* bwd) {
    auto& d = c10::Dispatcher::singleton();
    return FamilyOps{d.findSchemaOrThrow(fwd, "").typed<FwdOp>(),
                     d.findSchemaOrThrow(bwd, "").typed<BwdOp>()};
  };
  static const FamilyOps mlp = lookup("gradres_fused::mlp_fwd", "gradres_fused::mlp_bwd");
  static const FamilyOps cnv = lookup("gradres_fused::conv_fwd", "gradres_fused::conv_bwd");
  return conv ? cnv : mlp;
}

OptTensor as_optional(const Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

// Saved: x, w1, b1 (undefined when None), w2, alpha and the forward's z, a, ĝ, r — what the
// bwd op reads; z, a, ĝ, r are outputs that autograd never differentiates. Of z and a only the
// one the activation keeps (blocks.h block_fwd: a for relu, z for the others; the other is a
// one-element placeholder, not saved: the backward passes the kept tensor in both slots, and the
// bwd op reads only the one it needs), so a block keeps one hidden-sized tensor, as plain
// autograd's relu block does.
template <bool kConv>
struct BlockFunction : torch::autograd::Function<BlockFunction<kConv>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w1,
                               const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
                               const Tensor& alpha, c10::string_view activation, bool normalize,
                               double eps, bool detach) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, z, a, g_hat, r] = family_ops(kConv).fwd.call(x, w1, b1, w2, b2, alpha, activation,
                                                          normalize, eps, detach);
    const bool keeps_a = act_saves_output(blocks::parse_act(activation));
    ctx->save_for_backward({x, w1, b1.value_or(Tensor()), w2, alpha, keeps_a ? Tensor() : z,
                            keeps_a ? a : Tensor(), g_hat, r});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["detach"] = detach;
    ctx->saved_data["has_b2"] = b2.has_value() && b2->defined();
    ctx->mark_non_differentiable({z, a, g_hat, r});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for z, a, ĝ, r
    return {y, z, a, g_hat, r};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // One slot per forward argument: x, w1, b1, w2, b2, alpha, activation, normalize, eps, detach.
    variable_list out(10);
    const Tensor& y_bar = grads[0];
    if (!y_bar.defined()) return out;  // y unused downstream (grads are not materialized)
    const auto saved = ctx->get_saved_variables();
    const Tensor& b1 = saved[2];
    const Tensor& kept = saved[5].defined() ? saved[5] : saved[6];  // z, or a (relu)
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [x_bar, w1_bar, b1_bar, w2_bar, b2_bar, alpha_bar] = family_ops(kConv).bwd.call(
        y_bar, saved[0], saved[1], as_optional(b1), saved[3], saved[4], kept, kept,
        saved[7], saved[8], activation, ctx->saved_data["normalize"].toBool(),
        ctx->saved_data["eps"].toDouble(), ctx->saved_data["detach"].toBool());
    out[0] = x_bar;
    out[1] = w1_bar;
    if (b1.defined()) out[2] = b1_bar;
    out[3] = w2_bar;
    if (ctx->saved_data["has_b2"].toBool()) out[4] = b2_bar;
    out[5] = alpha_bar;
    return out;
  }
};

template <bool kConv>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> block_fwd_autograd(
    const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
    const OptTensor& b2, const Tensor& alpha, c10::string_view activation, bool normalize,
    double eps, bool detach) {
  auto o = BlockFunction<kConv>::apply(x, w1, b1, w2, b2, alpha, activation, normalize, eps,
                                       detach);
  return {o[0], o[1], o[2], o[3], o[4]};
}

}  // namespace
}  // namespace gradres

TORCH_LIBRARY_IMPL(gradres_fused, Autograd, m) {
  m.impl("mlp_fwd", &gradres::block_fwd_autograd<false>);
  m.impl("conv_fwd", &gradres::block_fwd_autograd<true>);
}
