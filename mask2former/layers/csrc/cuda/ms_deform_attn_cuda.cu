// CUDA kernels of multi-scale deformable attention: float32, float16, bfloat16 (and float64), accumulating
// in float32 (float64 for float64 values).
//
// Thread layout: a group of G lanes (G a power of two <= 32, so a group never straddles a warp) handles one
// (batch, query, head); lane j owns the channel chunks [c, c + VEC) with c = j * VEC, j * VEC + G * VEC, ...
// and moves them with one aligned vector access (16 bytes when D allows, else VEC = 1).
// The level table (sizes and offsets) is a kernel argument, read and checked on the host before the launch.
// Backward: only the requested gradients are computed (output_mask). The per-sample gradients of the location
// and the attention weight are summed over the group with warp shuffles and written once (deterministic);
// gradients of value are scattered with atomicAdd, whose order varies between runs (nondeterministic:
// torch.use_deterministic_algorithms(True) makes it raise). They are accumulated in the value's own dtype for
// float16 (10-bit mantissa, as PyTorch's grid_sample backward does; no full-size float32 buffer), and in float32
// for bfloat16, whose 8-bit mantissa would lose about 1% over the tens of contributions a position receives.
#include <ATen/Dispatch.h>
#include <ATen/Context.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../ms_deform_attn.h"

namespace mask2former {

namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename scalar_t, int VEC>
__device__ __forceinline__ Pack<scalar_t, VEC> load_pack(const scalar_t* p) {
  return *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
}

// Sum over the G lanes of a group; every lane of the warp must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t x, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ value, const LevelTable levels,
                   const at::opmath_type<scalar_t>* __restrict__ loc, const at::opmath_type<scalar_t>* __restrict__ attn,
                   scalar_t* __restrict__ out, MsdaSizes n, int group) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t bqm = thread / group;  // (b * Q + q) * M + m
  if (bqm >= n.B * n.Q * n.M) {
    return;
  }
  const int lane = static_cast<int>(thread % group);
  const int64_t m = bqm % n.M;
  const int64_t b = bqm / (n.Q * n.M);
  const int64_t pos_stride = n.M * n.D;  // between positions of one head in value
  for (int64_t c = static_cast<int64_t>(lane) * VEC; c < n.D; c += static_cast<int64_t>(group) * VEC) {
    acc_t acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc[i] = 0;
    }
    for (int64_t l = 0; l < n.L; ++l) {
      const int64_t height = levels.height[l], width = levels.width[l];
      const scalar_t* v_level = value + (b * n.S + levels.start[l]) * pos_stride + m * n.D + c;
      for (int64_t p = 0; p < n.P; ++p) {
        const int64_t s = (bqm * n.L + l) * n.P + p;
        Bilinear<acc_t> bl;
        if (!make_bilinear(loc[2 * s], loc[2 * s + 1], height, width, bl)) {
          continue;
        }
        const acc_t a = attn[s];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (bl.index[k] < 0) {
            continue;
          }
          const Pack<scalar_t, VEC> v = load_pack<scalar_t, VEC>(v_level + bl.index[k] * pos_stride);
          const acc_t w = a * bl.weight[k];
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            acc[i] += w * static_cast<acc_t>(v.v[i]);
          }
        }
      }
    }
    Pack<scalar_t, VEC> o;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      o.v[i] = static_cast<scalar_t>(acc[i]);
    }
    *reinterpret_cast<Pack<scalar_t, VEC>*>(out + bqm * n.D + c) = o;
  }
}

// grad_value (of type grad_t), grad_loc and grad_attn are null when not requested.
template <typename scalar_t, typename grad_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value, const LevelTable levels,
                    const at::opmath_type<scalar_t>* __restrict__ loc, const at::opmath_type<scalar_t>* __restrict__ attn,
                    grad_t* __restrict__ grad_value, at::opmath_type<scalar_t>* __restrict__ grad_loc,
                    at::opmath_type<scalar_t>* __restrict__ grad_attn, MsdaSizes n, int group) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Lanes past the last (b, q, m) stay to the end with zero contributions: all lanes of a warp shuffle.
  const bool active = thread / group < n.B * n.Q * n.M;
  const int64_t bqm = active ? thread / group : 0;
  const int lane = static_cast<int>(thread % group);
  const int64_t m = bqm % n.M;
  const int64_t b = bqm / (n.Q * n.M);
  const int64_t pos_stride = n.M * n.D;
  const bool sample_grads = grad_loc != nullptr || grad_attn != nullptr;
  for (int64_t l = 0; l < n.L; ++l) {
    const int64_t height = levels.height[l], width = levels.width[l];
    const int64_t level_offset = (b * n.S + levels.start[l]) * pos_stride + m * n.D;
    for (int64_t p = 0; p < n.P; ++p) {
      const int64_t s = (bqm * n.L + l) * n.P + p;
      const acc_t a = attn[s];
      Bilinear<acc_t> bl;
      const bool inside = active && make_bilinear(loc[2 * s], loc[2 * s + 1], height, width, bl);
      acc_t d_attn = 0, d_x = 0, d_y = 0;
      if (inside) {
        acc_t dot[4] = {0, 0, 0, 0};  // <grad_output, value at corner k> over this lane's channels
        for (int64_t c = static_cast<int64_t>(lane) * VEC; c < n.D; c += static_cast<int64_t>(group) * VEC) {
          const Pack<scalar_t, VEC> go = load_pack<scalar_t, VEC>(grad_out + bqm * n.D + c);
          acc_t g[VEC];
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            g[i] = static_cast<acc_t>(go.v[i]);
          }
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (bl.index[k] < 0) {
              continue;
            }
            const int64_t offset = level_offset + bl.index[k] * pos_stride + c;
            if (sample_grads) {
              const Pack<scalar_t, VEC> v = load_pack<scalar_t, VEC>(value + offset);
#pragma unroll
              for (int i = 0; i < VEC; ++i) {
                dot[k] += g[i] * static_cast<acc_t>(v.v[i]);
              }
            }
            if (grad_value != nullptr) {
              const acc_t w = a * bl.weight[k];
#pragma unroll
              for (int i = 0; i < VEC; ++i) {
                gpuAtomicAdd(grad_value + offset + i, static_cast<grad_t>(w * g[i]));
              }
            }
          }
        }
        d_attn = bilinear_value(bl, dot);
        d_x = bilinear_dx(bl, dot, width);
        d_y = bilinear_dy(bl, dot, height);
      }
      d_attn = group_sum(d_attn, group);
      d_x = group_sum(d_x, group);
      d_y = group_sum(d_y, group);
      if (active && lane == 0) {
        if (grad_attn != nullptr) {
          grad_attn[s] = d_attn;
        }
        if (grad_loc != nullptr) {
          grad_loc[2 * s] = a * d_x;
          grad_loc[2 * s + 1] = a * d_y;
        }
      }
    }
  }
}

// Lanes per (b, q, m): the number of VEC-chunks of D rounded up to a power of two, at most a warp.
int group_size(int64_t channels, int vec) {
  const int64_t chunks = (channels + vec - 1) / vec;
  int group = 1;
  while (group < chunks && group < 32) {
    group *= 2;
  }
  return group;
}

// 16-byte vectors when D is a multiple of the vector width and the tensors are 16-byte aligned.
template <typename scalar_t>
bool use_vectors(int64_t channels, std::initializer_list<const void*> pointers) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  bool ok = channels % kVec == 0;
  for (const void* p : pointers) {
    ok = ok && reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
  }
  return ok;
}

unsigned int num_blocks(const MsdaSizes& n, int group) {
  const int64_t threads = n.B * n.Q * n.M * group;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= INT_MAX, "ms_deform_attn: ", threads, " CUDA threads exceed one launch");
  return static_cast<unsigned int>(blocks);
}

struct CudaInputs {
  at::Tensor value, loc, attn;
  LevelTable levels;
};

// Checked inputs, contiguous, with locations and weights in the accumulation type, and the level table read
// from the (checked) levels on the host.
CudaInputs prepare(const at::Tensor& value, const at::Tensor& shapes_cpu, const at::Tensor& starts_cpu,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn: the CUDA kernel got value on ", value.device());
  const at::ScalarType acc_type = at::toOpMathType(value.scalar_type());
  return {value.contiguous(), sampling_locations.to(acc_type).contiguous(), attention_weights.to(acc_type).contiguous(),
          make_level_table(shapes_cpu, starts_cpu)};
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  // The levels are read and checked on the host before anything is launched.
  const auto [shapes_cpu, starts_cpu] = levels_on_host(spatial_shapes, level_start_index);
  const MsdaSizes n = check_ms_deform_attn_inputs(value, shapes_cpu, starts_cpu, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const CudaInputs in = prepare(value, shapes_cpu, starts_cpu, sampling_locations, attention_weights);
  at::Tensor out = at::empty({n.B, n.Q, n.M * n.D}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const scalar_t* v = in.value.const_data_ptr<scalar_t>();
    const acc_t* loc = in.loc.const_data_ptr<acc_t>();
    const acc_t* attn = in.attn.const_data_ptr<acc_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (use_vectors<scalar_t>(n.D, {v, o})) {
      const int group = group_size(n.D, kVec);
      forward_kernel<scalar_t, kVec><<<num_blocks(n, group), kThreads, 0, stream>>>(v, in.levels, loc, attn, o, n, group);
    } else {
      const int group = group_size(n.D, 1);
      forward_kernel<scalar_t, 1><<<num_blocks(n, group), kThreads, 0, stream>>>(v, in.levels, loc, attn, o, n, group);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    std::array<bool, 3> output_mask) {
  const auto [shapes_cpu, starts_cpu] = levels_on_host(spatial_shapes, level_start_index);
  const MsdaSizes n = check_ms_deform_attn_backward_inputs(grad_output, value, shapes_cpu, starts_cpu,
                                                           sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const CudaInputs in = prepare(value, shapes_cpu, starts_cpu, sampling_locations, attention_weights);
  if (output_mask[0]) {
    at::globalContext().alertNotDeterministic("ms_deform_attn_backward_cuda (gradient of value)");
  }
  const at::Tensor go = grad_output.to(value.scalar_type()).contiguous();
  const auto acc_options = value.options().dtype(at::toOpMathType(value.scalar_type()));
  // float16 accumulates in place; bfloat16 (and float32, float64) in the accumulation type.
  const auto grad_value_options = value.scalar_type() == at::kHalf ? value.options() : acc_options;
  const auto empty = [&](const at::Tensor& like) { return at::empty({0}, like.options()); };
  at::Tensor grad_value = output_mask[0] ? at::zeros(value.sizes(), grad_value_options) : empty(value);
  at::Tensor grad_loc = output_mask[1] ? at::zeros(sampling_locations.sizes(), acc_options) : empty(sampling_locations);
  at::Tensor grad_attn = output_mask[2] ? at::zeros(attention_weights.sizes(), acc_options) : empty(attention_weights);
  if (n.B * n.Q * n.M > 0 && (output_mask[0] || output_mask[1] || output_mask[2])) {
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          using grad_t = std::conditional_t<std::is_same_v<scalar_t, at::Half>, at::Half, acc_t>;
          constexpr int kVec = 16 / sizeof(scalar_t);
          const scalar_t* g = go.const_data_ptr<scalar_t>();
          const scalar_t* v = in.value.const_data_ptr<scalar_t>();
          const acc_t* loc = in.loc.const_data_ptr<acc_t>();
          const acc_t* attn = in.attn.const_data_ptr<acc_t>();
          grad_t* gv = output_mask[0] ? grad_value.mutable_data_ptr<grad_t>() : nullptr;
          acc_t* gl = output_mask[1] ? grad_loc.mutable_data_ptr<acc_t>() : nullptr;
          acc_t* ga = output_mask[2] ? grad_attn.mutable_data_ptr<acc_t>() : nullptr;
          if (use_vectors<scalar_t>(n.D, {g, v})) {
            const int group = group_size(n.D, kVec);
            backward_kernel<scalar_t, grad_t, kVec><<<num_blocks(n, group), kThreads, 0, stream>>>(
                g, v, in.levels, loc, attn, gv, gl, ga, n, group);
          } else {
            const int group = group_size(n.D, 1);
            backward_kernel<scalar_t, grad_t, 1><<<num_blocks(n, group), kThreads, 0, stream>>>(
                g, v, in.levels, loc, attn, gv, gl, ga, n, group);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {output_mask[0] ? grad_value.to(value.scalar_type()) : grad_value,
          output_mask[1] ? grad_loc.to(sampling_locations.scalar_type()) : grad_loc,
          output_mask[2] ? grad_attn.to(attention_weights.scalar_type()) : grad_attn};
}

}  // namespace mask2former

TORCH_LIBRARY_IMPL(mask2former, CUDA, m) {
  m.impl("ms_deform_attn", &mask2former::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &mask2former::ms_deform_attn_backward_cuda);
}
