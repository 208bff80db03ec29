// gradres_fused C++ ops: the schemas. The kernels are registered per device with the dispatcher —
// CPU from stages_cpu.cpp, CUDA from cuda/stages_cuda.cpp — both the glue of blocks.h (GEMMs and
// convolutions through ATen, everything between them in the fused passes of stages.h) over that
// device's stages. The forward ops' autograd is registered in C++ (autograd.cpp: the fused *_bwd
// op is their backward); the fake (meta) kernels and the *_bwd ops' autograd (the composite
// implementation) from Python (gradres_fused/cpp.py, fused_op.py).
#include <torch/library.h>

#include <string>
#include <vector>

// The forward returns y and the intermediates its backward reads (z, a, ĝ, r; of z and a only the
// one the activation keeps — a for relu, z otherwise — the other a one-element placeholder:
// blocks.h block_fwd); `detach` only selects that backward. The backward takes b1 and eps although its kernels do not read them: its own
// (composite) backward recomputes z = L1(x) + b1 and r from them.
//
// Tagged flexible_layout: the kernels take inputs of any strides (they lay them out themselves, a
// conv block in x's memory format) and the fake kernels report the layouts the kernels return, so
// Inductor may pass tensors in whatever layout its graph has. Untagged, it pins a custom op's
// inputs to the strides seen while tracing: under its CPU layout optimization (every graph with a
// convolution runs channels_last) each conv block of a contiguous model then paid transposes of
// x, y, z, a and ĝ to and from channels_last, and a compiled 16-block EDSR step took 1.25×
// plain instead of eager's 1.17× (1.04× tagged; AVX-512 EPYC, 2 cores).
TORCH_LIBRARY(gradres_fused, m) {
  const std::vector<at::Tag> tags = {at::Tag::flexible_layout};
  for (const char* fam : {"mlp", "conv"}) {
    m.def((std::string(fam) +
          "_fwd(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor alpha, "
          "str activation, bool normalize, float eps, bool detach) "
          "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
              .c_str(),
          tags);
    m.def((std::string(fam) +
          "_bwd(Tensor y_bar, Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor alpha, "
          "Tensor z, Tensor a, Tensor g_hat, Tensor r, str activation, bool normalize, "
          "float eps, "
          "bool detach) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
              .c_str(),
          tags);
  }
}

// A Python module so `import gradres_fused._C` loads the library (and its registrations).
#include <Python.h>
static struct PyModuleDef gradres_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&gradres_module); }
