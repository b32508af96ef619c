// CPU kernels of multi-scale deformable attention (float32, float64, and float16 / bfloat16 with float
// accumulation). Forward: parallel over chunks of (batch, query). Backward: parallel over (batch, head), so each
// task owns the slice value[b, :, m, :] of grad_value and accumulates into it without atomics.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../ms_deform_attn.h"

// The kernels are also compiled for AVX2 + FMA (x86-64-v3) and picked at load time where the CPU has them.
// The forward and backward passes have AVX-512 paths for float32 and bfloat16 values with D a multiple of 16 (up to 64): the
// D channels of a head stay in 1-4 vector registers, bfloat16 values are widened by a shift and the result is
// rounded back to bfloat16 (to nearest even, as c10::BFloat16 does) in one instruction.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__linux__)
#define MSDA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define MSDA_AVX512 1
#include <immintrin.h>
#define MSDA_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#else
#define MSDA_CPU_CLONES
#define MSDA_AVX512 0
#endif

namespace mask2former {

namespace {

// <a, b> over n channels with 8 partial sums, so the compiler can vectorise the reduction.
template <typename acc_t, typename scalar_t>
inline acc_t dot(const acc_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n) {
  constexpr int64_t kLanes = 8;
  acc_t part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      part[j] += a[d + j] * static_cast<acc_t>(b[d + j]);
    }
  }
  acc_t sum = 0;
  for (; d < n; ++d) {
    sum += a[d] * static_cast<acc_t>(b[d]);
  }
  for (int64_t j = 0; j < kLanes; ++j) {
    sum += part[j];
  }
  return sum;
}

// acc[d] += w * v[d]
template <typename acc_t, typename scalar_t>
inline void axpy(acc_t w, const scalar_t* __restrict__ v, acc_t* __restrict__ acc, int64_t n) {
  for (int64_t d = 0; d < n; ++d) {
    acc[d] += w * static_cast<acc_t>(v[d]);
  }
}

// Runs fn(begin, end) over [0, n) in chunks of `grain` that the threads take in turn, so that a thread slowed
// down (on a machine shared with other work) does not hold the others back as a static split would.
template <typename F>
void parallel_chunks(int64_t n, int64_t grain, const F& fn) {
  const int64_t chunks = (n + grain - 1) / grain;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), chunks), 1, [&](int64_t, int64_t) {
    for (int64_t c = next++; c < chunks; c = next++) {
      fn(c * grain, std::min(n, (c + 1) * grain));
    }
  });
}

// Forward for (batch, query) pairs [begin, end).
template <typename scalar_t>
MSDA_CPU_CLONES void forward_range(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                                   const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn,
                                   scalar_t* out, const MsdaSizes& n, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pos_stride = n.M * n.D;  // between positions of one head in value
  std::vector<acc_t> acc(n.D);
  for (int64_t bq = begin; bq < end; ++bq) {
    const int64_t b = bq / n.Q;
    for (int64_t m = 0; m < n.M; ++m) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const int64_t sample0 = (bq * n.M + m) * n.L * n.P;  // first (l, p) of this (b, q, m)
      for (int64_t l = 0; l < n.L; ++l) {
        const scalar_t* v_level = value + (b * n.S + starts[l]) * pos_stride + m * n.D;
        for (int64_t p = 0; p < n.P; ++p) {
          const int64_t s = sample0 + l * n.P + p;
          Bilinear<acc_t> bl;
          if (!make_bilinear(loc[2 * s], loc[2 * s + 1], shapes[2 * l], shapes[2 * l + 1], bl)) {
            continue;
          }
          for (int k = 0; k < 4; ++k) {
            if (bl.index[k] < 0) {
              continue;
            }
            axpy(attn[s] * bl.weight[k], v_level + bl.index[k] * pos_stride, acc.data(), n.D);
          }
        }
      }
      scalar_t* o = out + (bq * n.M + m) * n.D;
      for (int64_t d = 0; d < n.D; ++d) {
        o[d] = static_cast<scalar_t>(acc[d]);
      }
    }
  }
}

#if MSDA_AVX512
// 16 values widened to float32.
MSDA_AVX512_TARGET inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
MSDA_AVX512_TARGET inline __m512 load16(const c10::BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  // (maskz forms: the unmasked ones trip a false -Wmaybe-uninitialized inside GCC 12's headers)
  const __m512i widened = _mm512_maskz_cvtepu16_epi32(0xFFFF, bits);
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, widened, 16));
}
MSDA_AVX512_TARGET inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
// The sum of the 16 lanes (by halving; _mm512_reduce_add_ps trips the same false warning).
MSDA_AVX512_TARGET inline float sum16(__m512 v) {
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0x4E));  // + the other 256 bits
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0xB1));  // + the other 128 bits
  v = _mm512_add_ps(v, _mm512_maskz_permute_ps(0xFFFF, v, 0x4E));        // + the other 64 bits
  v = _mm512_add_ps(v, _mm512_maskz_permute_ps(0xFFFF, v, 0xB1));        // + the other 32 bits
  return _mm512_cvtss_f32(v);
}
MSDA_AVX512_TARGET inline void store16(c10::BFloat16* p, __m512 v) {
  const __m256bh rounded = _mm512_cvtneps_pbh(v);
  std::memcpy(p, &rounded, sizeof(rounded));
}

// forward_range for D = 16 * kVectors channels per head, accumulating in registers.
template <typename scalar_t, int kVectors>
MSDA_AVX512_TARGET void forward_range_avx512(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                                             const float* loc, const float* attn, scalar_t* out, const MsdaSizes& n,
                                             int64_t begin, int64_t end) {
  const int64_t pos_stride = n.M * n.D;
  for (int64_t bq = begin; bq < end; ++bq) {
    const int64_t b = bq / n.Q;
    for (int64_t m = 0; m < n.M; ++m) {
      __m512 acc[kVectors];
      for (int i = 0; i < kVectors; ++i) {
        acc[i] = _mm512_setzero_ps();
      }
      const int64_t sample0 = (bq * n.M + m) * n.L * n.P;
      for (int64_t l = 0; l < n.L; ++l) {
        const scalar_t* v_level = value + (b * n.S + starts[l]) * pos_stride + m * n.D;
        for (int64_t p = 0; p < n.P; ++p) {
          const int64_t s = sample0 + l * n.P + p;
          Bilinear<float> bl;
          if (!make_bilinear(loc[2 * s], loc[2 * s + 1], shapes[2 * l], shapes[2 * l + 1], bl)) {
            continue;
          }
          for (int k = 0; k < 4; ++k) {
            if (bl.index[k] < 0) {
              continue;
            }
            const __m512 w = _mm512_set1_ps(attn[s] * bl.weight[k]);
            const scalar_t* src = v_level + bl.index[k] * pos_stride;
            for (int i = 0; i < kVectors; ++i) {
              acc[i] = _mm512_fmadd_ps(w, load16(src + 16 * i), acc[i]);
            }
          }
        }
      }
      scalar_t* o = out + (bq * n.M + m) * n.D;
      for (int i = 0; i < kVectors; ++i) {
        store16(o + 16 * i, acc[i]);
      }
    }
  }
}

// The AVX-512 forward for these values when the CPU and D allow it; false otherwise.
template <typename scalar_t>
bool forward_avx512(const at::Tensor& v, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc,
                    const at::Tensor& attn, at::Tensor& out, const MsdaSizes& n) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
    static const bool cpu_ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    if (!cpu_ok || n.D % 16 != 0 || n.D > 64) {
      return false;
    }
    auto run = [&](auto vectors) {
      parallel_chunks(n.B * n.Q, 32, [&](int64_t begin, int64_t end) {
        forward_range_avx512<scalar_t, decltype(vectors)::value>(
            v.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
            loc.const_data_ptr<float>(), attn.const_data_ptr<float>(), out.mutable_data_ptr<scalar_t>(), n, begin,
            end);
      });
    };
    switch (n.D / 16) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      default: run(std::integral_constant<int, 4>{}); break;
    }
    return true;
  } else {
    return false;
  }
}
#endif

// Backward for (batch, head) pairs [begin, end): writes grad_value[b, :, m, :] and the gradients of their samples.
template <typename scalar_t>
MSDA_CPU_CLONES void backward_range(const scalar_t* grad_out, const scalar_t* value, const int64_t* shapes,
                                    const int64_t* starts, const at::opmath_type<scalar_t>* loc,
                                    const at::opmath_type<scalar_t>* attn, at::opmath_type<scalar_t>* grad_value,
                                    at::opmath_type<scalar_t>* grad_loc, at::opmath_type<scalar_t>* grad_attn,
                                    const MsdaSizes& n, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pos_stride = n.M * n.D;
  std::vector<acc_t> go(n.D);
  for (int64_t bm = begin; bm < end; ++bm) {
    const int64_t b = bm / n.M, m = bm % n.M;
    for (int64_t q = 0; q < n.Q; ++q) {
      const int64_t bq = b * n.Q + q;
      const scalar_t* go_src = grad_out + (bq * n.M + m) * n.D;
      for (int64_t d = 0; d < n.D; ++d) {
        go[d] = static_cast<acc_t>(go_src[d]);
      }
      const int64_t sample0 = (bq * n.M + m) * n.L * n.P;
      for (int64_t l = 0; l < n.L; ++l) {
        const int64_t level_offset = (b * n.S + starts[l]) * pos_stride + m * n.D;
        const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
        for (int64_t p = 0; p < n.P; ++p) {
          const int64_t s = sample0 + l * n.P + p;
          Bilinear<acc_t> bl;
          if (!make_bilinear(loc[2 * s], loc[2 * s + 1], height, width, bl)) {
            grad_attn[s] = 0;
            grad_loc[2 * s] = 0;
            grad_loc[2 * s + 1] = 0;
            continue;
          }
          acc_t dot[4] = {0, 0, 0, 0};
          for (int k = 0; k < 4; ++k) {
            if (bl.index[k] < 0) {
              continue;
            }
            const int64_t offset = level_offset + bl.index[k] * pos_stride;
            dot[k] = mask2former::dot(go.data(), value + offset, n.D);
            axpy(attn[s] * bl.weight[k], go.data(), grad_value + offset, n.D);
          }
          grad_attn[s] = bilinear_value(bl, dot);
          grad_loc[2 * s] = attn[s] * bilinear_dx(bl, dot, width);
          grad_loc[2 * s + 1] = attn[s] * bilinear_dy(bl, dot, height);
        }
      }
    }
  }
}

#if MSDA_AVX512
// backward_range for D = 16 * kVectors channels per head: the head's output gradient stays in registers, the
// four dot products of a sample are vector sums, and grad_value (float32) is updated 16 channels at a time.
template <typename scalar_t, int kVectors>
MSDA_AVX512_TARGET void backward_range_avx512(const scalar_t* grad_out, const scalar_t* value, const int64_t* shapes,
                                              const int64_t* starts, const float* loc, const float* attn,
                                              float* grad_value, float* grad_loc, float* grad_attn,
                                              const MsdaSizes& n, int64_t begin, int64_t end) {
  const int64_t pos_stride = n.M * n.D;
  for (int64_t bm = begin; bm < end; ++bm) {
    const int64_t b = bm / n.M, m = bm % n.M;
    for (int64_t q = 0; q < n.Q; ++q) {
      const int64_t bq = b * n.Q + q;
      __m512 go[kVectors];
      for (int i = 0; i < kVectors; ++i) {
        go[i] = load16(grad_out + (bq * n.M + m) * n.D + 16 * i);
      }
      const int64_t sample0 = (bq * n.M + m) * n.L * n.P;
      for (int64_t l = 0; l < n.L; ++l) {
        const int64_t level_offset = (b * n.S + starts[l]) * pos_stride + m * n.D;
        const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
        for (int64_t p = 0; p < n.P; ++p) {
          const int64_t s = sample0 + l * n.P + p;
          Bilinear<float> bl;
          if (!make_bilinear(loc[2 * s], loc[2 * s + 1], height, width, bl)) {
            grad_attn[s] = 0;
            grad_loc[2 * s] = 0;
            grad_loc[2 * s + 1] = 0;
            continue;
          }
          float dot[4] = {0, 0, 0, 0};
          for (int k = 0; k < 4; ++k) {
            if (bl.index[k] < 0) {
              continue;
            }
            const int64_t offset = level_offset + bl.index[k] * pos_stride;
            const __m512 w = _mm512_set1_ps(attn[s] * bl.weight[k]);
            __m512 products = _mm512_setzero_ps();
            for (int i = 0; i < kVectors; ++i) {
              products = _mm512_fmadd_ps(go[i], load16(value + offset + 16 * i), products);
              float* g = grad_value + offset + 16 * i;
              _mm512_storeu_ps(g, _mm512_fmadd_ps(w, go[i], _mm512_loadu_ps(g)));
            }
            dot[k] = sum16(products);
          }
          grad_attn[s] = bilinear_value(bl, dot);
          grad_loc[2 * s] = attn[s] * bilinear_dx(bl, dot, width);
          grad_loc[2 * s + 1] = attn[s] * bilinear_dy(bl, dot, height);
        }
      }
    }
  }
}

// The AVX-512 backward for these values when the CPU and D allow it; false otherwise.
template <typename scalar_t>
bool backward_avx512(const at::Tensor& go, const at::Tensor& v, const at::Tensor& shapes, const at::Tensor& starts,
                     const at::Tensor& loc, const at::Tensor& attn, at::Tensor& grad_value, at::Tensor& grad_loc,
                     at::Tensor& grad_attn, const MsdaSizes& n) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
    static const bool cpu_ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    if (!cpu_ok || n.D % 16 != 0 || n.D > 64) {
      return false;
    }
    auto run = [&](auto vectors) {
      parallel_chunks(n.B * n.M, 1, [&](int64_t begin, int64_t end) {
        backward_range_avx512<scalar_t, decltype(vectors)::value>(
            go.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(),
            starts.const_data_ptr<int64_t>(), loc.const_data_ptr<float>(), attn.const_data_ptr<float>(),
            grad_value.mutable_data_ptr<float>(), grad_loc.mutable_data_ptr<float>(),
            grad_attn.mutable_data_ptr<float>(), n, begin, end);
      });
    };
    switch (n.D / 16) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      default: run(std::integral_constant<int, 4>{}); break;
    }
    return true;
  } else {
    return false;
  }
}
#endif

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MsdaSizes n =
      check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const at::Tensor v = value.contiguous();
  const at::ScalarType acc_type = at::toOpMathType(value.scalar_type());
  const at::Tensor loc = sampling_locations.to(acc_type).contiguous();
  const at::Tensor attn = attention_weights.to(acc_type).contiguous();
  const at::Tensor shapes = spatial_shapes.contiguous();
  const at::Tensor starts = level_start_index.contiguous();
  at::Tensor out = at::empty({n.B, n.Q, n.M * n.D}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
#if MSDA_AVX512
    if (forward_avx512<scalar_t>(v, shapes, starts, loc, attn, out, n)) {
      return;
    }
#endif
    parallel_chunks(n.B * n.Q, 32, [&](int64_t begin, int64_t end) {
      forward_range<scalar_t>(v.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(),
                              starts.const_data_ptr<int64_t>(), loc.const_data_ptr<acc_t>(),
                              attn.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), n, begin, end);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MsdaSizes n = check_ms_deform_attn_backward_inputs(grad_output, value, spatial_shapes, level_start_index,
                                                           sampling_locations, attention_weights);
  const at::Tensor go = grad_output.to(value.scalar_type()).contiguous();
  const at::Tensor v = value.contiguous();
  const at::ScalarType acc_type = at::toOpMathType(value.scalar_type());
  const at::Tensor loc = sampling_locations.to(acc_type).contiguous();
  const at::Tensor attn = attention_weights.to(acc_type).contiguous();
  const at::Tensor shapes = spatial_shapes.contiguous();
  const at::Tensor starts = level_start_index.contiguous();
  const auto acc_options = value.options().dtype(acc_type);
  at::Tensor grad_value = at::zeros(value.sizes(), acc_options);
  at::Tensor grad_loc = at::empty(sampling_locations.sizes(), acc_options);
  at::Tensor grad_attn = at::empty(attention_weights.sizes(), acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
#if MSDA_AVX512
    if (backward_avx512<scalar_t>(go, v, shapes, starts, loc, attn, grad_value, grad_loc, grad_attn, n)) {
      return;
    }
#endif
    // One task per (batch, head): each owns its slice of grad_value, so no atomics are needed.
    parallel_chunks(n.B * n.M, 1, [&](int64_t begin, int64_t end) {
      backward_range<scalar_t>(go.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                               shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
                               loc.const_data_ptr<acc_t>(), attn.const_data_ptr<acc_t>(),
                               grad_value.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<acc_t>(),
                               grad_attn.mutable_data_ptr<acc_t>(), n, begin, end);
    });
  });
  return {grad_value.to(value.scalar_type()), grad_loc.to(sampling_locations.scalar_type()),
          grad_attn.to(attention_weights.scalar_type())};
}

}  // namespace mask2former

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("ms_deform_attn", &mask2former::ms_deform_attn_forward_cpu);
}
