// Operator schemas, input checks and the Python module `mask2former._C`.
//
// Importing `mask2former._C` loads this library, which registers the operators with PyTorch's
// dispatcher; the kernels register themselves per device (cpu/, cuda/). Autograd and the fake
// (meta) implementations are registered from Python, in mask2former/layers/ms_deform_attn.py.
#include <Python.h>
#include <torch/library.h>

#include <array>

#include "ms_deform_attn.h"

namespace mask2former {

namespace {

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "ms_deform_attn: ", name, " must be a floating-point tensor, got ",
              t.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> levels_on_host(const at::Tensor& spatial_shapes,
                                                  const at::Tensor& level_start_index) {
  if (spatial_shapes.is_cpu() && level_start_index.is_cpu()) {
    return {spatial_shapes.contiguous(), level_start_index.contiguous()};
  }
  TORCH_WARN_ONCE("ms_deform_attn: spatial_shapes (", spatial_shapes.device(), ") and level_start_index (",
                  level_start_index.device(),
                  ") are copied to the host on every call to be checked, a synchronisation; pass them on the CPU");
  return {spatial_shapes.cpu().contiguous(), level_start_index.cpu().contiguous()};
}

LevelTable make_level_table(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  TORCH_CHECK(spatial_shapes.is_cpu() && level_start_index.is_cpu(),
              "ms_deform_attn: the level table is read from CPU tensors");
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(L <= kMaxLevels, "ms_deform_attn: at most ", kMaxLevels, " levels are supported, got ", L);
  const at::Tensor shapes_c = spatial_shapes.contiguous(), starts_c = level_start_index.contiguous();
  const auto shapes = shapes_c.accessor<int64_t, 2>();
  const auto starts = starts_c.accessor<int64_t, 1>();
  LevelTable table{};
  for (int64_t l = 0; l < L; ++l) {
    table.height[l] = shapes[l][0];
    table.width[l] = shapes[l][1];
    table.start[l] = starts[l];
  }
  return table;
}

MsdaSizes check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be [B, S, M, D], got ", value.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be [B, Q, M, L, P, 2], got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, "ms_deform_attn: attention_weights must be [B, Q, M, L, P], got ",
              attention_weights.sizes());
  const MsdaSizes n{value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
                    sampling_locations.size(3), sampling_locations.size(4)};
  TORCH_CHECK(sampling_locations.size(0) == n.B && sampling_locations.size(2) == n.M,
              "ms_deform_attn: sampling_locations ", sampling_locations.sizes(), " does not match value ",
              value.sizes(), " in batch or heads");
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights ", attention_weights.sizes(),
              " must be sampling_locations' shape without the last dimension, ", sampling_locations.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == n.L && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be [L, 2] with L = ", n.L, " levels, got ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == n.L,
              "ms_deform_attn: level_start_index must be [L] with L = ", n.L, ", got ", level_start_index.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64, got ", spatial_shapes.scalar_type(),
              " and ", level_start_index.scalar_type());
  check_floating(value, "value");
  check_floating(sampling_locations, "sampling_locations");
  check_floating(attention_weights, "attention_weights");
  TORCH_CHECK(sampling_locations.device() == value.device() && attention_weights.device() == value.device(),
              "ms_deform_attn: value, sampling_locations and attention_weights must be on one device, got ",
              value.device(), ", ", sampling_locations.device(), ", ", attention_weights.device());
  const auto [shapes_cpu, starts_cpu] = levels_on_host(spatial_shapes, level_start_index);
  const auto shapes = shapes_cpu.accessor<int64_t, 2>();
  const auto starts = starts_cpu.accessor<int64_t, 1>();
  int64_t total = 0;
  for (int64_t l = 0; l < n.L; ++l) {
    TORCH_CHECK(shapes[l][0] > 0 && shapes[l][1] > 0, "ms_deform_attn: spatial_shapes[", l,
                "] must be positive, got ", shapes[l][0], "x", shapes[l][1]);
    TORCH_CHECK(starts[l] == total, "ms_deform_attn: level_start_index[", l, "] = ", starts[l],
                " but the levels before it hold ", total, " positions");
    total += shapes[l][0] * shapes[l][1];
  }
  TORCH_CHECK(total == n.S, "ms_deform_attn: spatial_shapes cover ", total, " positions but value has S = ", n.S);
  return n;
}

MsdaSizes check_ms_deform_attn_backward_inputs(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MsdaSizes n =
      check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == n.B && grad_output.size(1) == n.Q &&
                  grad_output.size(2) == n.M * n.D,
              "ms_deform_attn_backward: grad_output must be [B, Q, M * D] = [", n.B, ", ", n.Q, ", ", n.M * n.D,
              "], got ", grad_output.sizes());
  TORCH_CHECK(grad_output.device() == value.device(), "ms_deform_attn_backward: grad_output is on ",
              grad_output.device(), " but value is on ", value.device());
  return n;
}

// The CPU kernel computes the three gradients in one pass; unwanted ones are dropped.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu_selected(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    std::array<bool, 3> output_mask) {
  auto [grad_value, grad_loc, grad_attn] = ms_deform_attn_backward_cpu(
      grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  return {output_mask[0] ? grad_value : grad_value.new_empty({0}),
          output_mask[1] ? grad_loc : grad_loc.new_empty({0}),
          output_mask[2] ? grad_attn : grad_attn.new_empty({0})};
}

}  // namespace mask2former

TORCH_LIBRARY(mask2former, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  // output_mask: which of (grad_value, grad_sampling_locations, grad_attention_weights) are wanted; an unwanted
  // gradient is returned as an empty tensor (size [0]).
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("ms_deform_attn_backward", &mask2former::ms_deform_attn_backward_cpu_selected);
}

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C",
      "Compiled kernels of mask2former: loading it registers torch.ops.mask2former.*", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef WITH_CUDA
  PyObject* with_cuda = Py_True;
#else
  PyObject* with_cuda = Py_False;
#endif
#ifdef _OPENMP
  PyObject* with_openmp = Py_True;  // at::parallel_for runs the CPU kernels on torch's threads
#else
  PyObject* with_openmp = Py_False;
#endif
  if (PyModule_AddObjectRef(module, "WITH_CUDA", with_cuda) < 0 ||
      PyModule_AddObjectRef(module, "WITH_OPENMP", with_openmp) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
