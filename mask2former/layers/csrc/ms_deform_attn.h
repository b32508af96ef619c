// Multi-scale deformable attention: declarations and the checks and sampling rule shared by the kernels.
//
// Shapes: value [B, S, M, D], spatial_shapes [L, 2] (H_l, W_l), level_start_index [L],
// sampling_locations [B, Q, M, L, P, 2] normalised (x, y), attention_weights [B, Q, M, L, P],
// output [B, Q, M * D].
//
// spatial_shapes and level_start_index are read on the host (best passed on the CPU: on a GPU they
// are copied to the host on every call, a synchronisation, with a one-time warning) and checked
// against value before any kernel runs.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <tuple>

namespace mask2former {

// Sizes of one call, read from the checked inputs.
struct MsdaSizes {
  int64_t B, S, M, D, Q, L, P;
};

// At most this many levels (the CUDA kernels take the level table as a kernel argument).
constexpr int64_t kMaxLevels = 16;

// Sizes and offsets of the levels, read on the host and passed to the CUDA kernels by value.
struct LevelTable {
  int64_t height[kMaxLevels];
  int64_t width[kMaxLevels];
  int64_t start[kMaxLevels];
};

// spatial_shapes and level_start_index on the CPU: themselves when they are there, else a copy (a
// synchronisation, warned about once per process).
std::tuple<at::Tensor, at::Tensor> levels_on_host(const at::Tensor& spatial_shapes,
                                                  const at::Tensor& level_start_index);

// The table of checked levels (spatial_shapes and level_start_index on the CPU, at most kMaxLevels).
LevelTable make_level_table(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index);

// Checks ranks, shapes, dtypes and devices, and the levels against value (errors name the argument);
// returns the sizes.
MsdaSizes check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

// Also checks grad_output [B, Q, M * D].
MsdaSizes check_ms_deform_attn_backward_inputs(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

// The four bilinear corners of one sampling point, in the order
// (low y, low x), (low y, high x), (high y, low x), (high y, high x).
template <typename acc_t>
struct Bilinear {
  int64_t index[4];  // y * W + x inside the level, or -1 for a corner outside the map (zero padding)
  acc_t weight[4];
  acc_t ly, lx, hy, hx;  // fractional offsets from the low corner and their complements
};

// grid_sample's convention (align_corners=False, zero padding): pixel = loc * size - 0.5.
// Returns false when no corner lies inside the map (or the location is NaN).
template <typename acc_t>
C10_HOST_DEVICE inline bool make_bilinear(acc_t x, acc_t y, int64_t height, int64_t width, Bilinear<acc_t>& out) {
  const acc_t py = y * static_cast<acc_t>(height) - static_cast<acc_t>(0.5);
  const acc_t px = x * static_cast<acc_t>(width) - static_cast<acc_t>(0.5);
  if (!(py >= -1 && px >= -1 && py < height && px < width)) {
    return false;
  }
  // floor() for values >= -1 without libm, so the same code runs on host and device.
  int64_t y0 = static_cast<int64_t>(py);
  int64_t x0 = static_cast<int64_t>(px);
  y0 -= static_cast<acc_t>(y0) > py;
  x0 -= static_cast<acc_t>(x0) > px;
  out.ly = py - static_cast<acc_t>(y0);
  out.lx = px - static_cast<acc_t>(x0);
  out.hy = 1 - out.ly;
  out.hx = 1 - out.lx;
  const bool y0_in = y0 >= 0, y1_in = y0 + 1 < height;
  const bool x0_in = x0 >= 0, x1_in = x0 + 1 < width;
  out.index[0] = (y0_in && x0_in) ? y0 * width + x0 : -1;
  out.index[1] = (y0_in && x1_in) ? y0 * width + x0 + 1 : -1;
  out.index[2] = (y1_in && x0_in) ? (y0 + 1) * width + x0 : -1;
  out.index[3] = (y1_in && x1_in) ? (y0 + 1) * width + x0 + 1 : -1;
  out.weight[0] = out.hy * out.hx;
  out.weight[1] = out.hy * out.lx;
  out.weight[2] = out.ly * out.hx;
  out.weight[3] = out.ly * out.lx;
  return true;
}

// Gradients of one sample from the dot products dot[k] = <grad_output, value at corner k>
// (0 for corners outside): d/d(attention weight), d/dx and d/dy of the normalised location,
// before scaling by the attention weight.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t bilinear_value(const Bilinear<acc_t>& s, const acc_t dot[4]) {
  return s.weight[0] * dot[0] + s.weight[1] * dot[1] + s.weight[2] * dot[2] + s.weight[3] * dot[3];
}
template <typename acc_t>
C10_HOST_DEVICE inline acc_t bilinear_dx(const Bilinear<acc_t>& s, const acc_t dot[4], int64_t width) {
  return (s.hy * (dot[1] - dot[0]) + s.ly * (dot[3] - dot[2])) * static_cast<acc_t>(width);
}
template <typename acc_t>
C10_HOST_DEVICE inline acc_t bilinear_dy(const Bilinear<acc_t>& s, const acc_t dot[4], int64_t height) {
  return (s.hx * (dot[2] - dot[0]) + s.lx * (dot[3] - dot[1])) * static_cast<acc_t>(height);
}

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

}  // namespace mask2former
