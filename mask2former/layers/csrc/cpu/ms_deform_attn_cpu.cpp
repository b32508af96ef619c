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
// rounded back to bfloat16 (to nearest even, as c10::BFloat16 does) in one instruction. The bilinear setup
// (corners, weights, bounds) of the L * P samples of a (query, head) runs 16 samples at a time in vector registers;
// the backward sums the dot products of 4 samples x 4 corners with one transpose-add tree (bfloat16: dpbf16
// multiplies pairs of channels) and computes the samples' gradients 16 at a time.
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
// The bfloat16 channels 32i..32i+31 of D = 16 * kVectors that exist: all 32, or 16 in the last, odd vector.
constexpr __mmask32 pair_mask(int kVectors, int i) { return 2 * i + 1 < kVectors ? 0xFFFFFFFFu : 0xFFFFu; }
MSDA_AVX512_TARGET inline void store16(c10::BFloat16* p, __m512 v) {
  const __m256bh rounded = _mm512_cvtneps_pbh(v);
  std::memcpy(p, &rounded, sizeof(rounded));
}

// The L * P samples of one (batch, query, head) in blocks of 16 lanes, and per lane its level's size and first
// position in S, so that the bilinear setup of a block runs in vector registers.
struct SampleLanes {
  int64_t count, blocks;  // L * P samples, blocks of 16
  std::vector<float> width, height;  // [blocks * 16]
  std::vector<int32_t> row, start;  // [blocks * 16]: width as an integer; the level's first position
};

SampleLanes make_sample_lanes(const int64_t* shapes, const int64_t* starts, const MsdaSizes& n) {
  SampleLanes lanes;
  lanes.count = n.L * n.P;
  lanes.blocks = (lanes.count + 15) / 16;
  lanes.width.assign(lanes.blocks * 16, 1);
  lanes.height.assign(lanes.blocks * 16, 1);
  lanes.row.assign(lanes.blocks * 16, 0);
  lanes.start.assign(lanes.blocks * 16, 0);
  for (int64_t s = 0; s < lanes.count; ++s) {
    const int64_t l = s / n.P;
    lanes.height[s] = static_cast<float>(shapes[2 * l]);
    lanes.width[s] = static_cast<float>(shapes[2 * l + 1]);
    lanes.row[s] = static_cast<int32_t>(shapes[2 * l + 1]);
    lanes.start[s] = static_cast<int32_t>(starts[l]);
  }
  return lanes;
}

// make_bilinear for the 16 samples of one block at once (lanes past the samples are not inside).
struct BilinearBlock {
  alignas(64) int32_t position[4][16];    // corner k of lane j: its position in S (where inside[k] has bit j)
  alignas(64) float attn_weight[4][16];   // attention weight * corner weight
  __m512 weight[4], lx, ly, hx, hy, attn, width, height;
  int count;            // lanes that hold a sample: the first count
  __mmask16 lanes;
  __mmask16 in;         // lanes with a corner inside the map (make_bilinear returned true)
  __mmask16 inside[4];  // corners inside the map
};

// Block `block` of the samples at loc [L * P, 2] and attn [L * P].
MSDA_AVX512_TARGET inline void make_bilinear_block(const float* loc, const float* attn, const SampleLanes& lanes,
                                                   int64_t block, BilinearBlock& out) {
  const int64_t first = 16 * block, count = std::min<int64_t>(16, lanes.count - first);
  const __mmask16 lane_mask = static_cast<__mmask16>((1u << count) - 1);
  out.count = static_cast<int>(count);
  out.lanes = lane_mask;
  // (x, y) pairs of the 16 lanes, split into x and y
  const __m512 pairs_lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << std::min<int64_t>(16, 2 * count)) - 1),
                                                loc + 2 * first);
  const __m512 pairs_hi = _mm512_maskz_loadu_ps(
      static_cast<__mmask16>((1u << std::max<int64_t>(0, 2 * count - 16)) - 1), loc + 2 * first + 16);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512 x = _mm512_permutex2var_ps(pairs_lo, even, pairs_hi);
  const __m512 y = _mm512_permutex2var_ps(pairs_lo, _mm512_add_epi32(even, _mm512_set1_epi32(1)), pairs_hi);
  out.attn = _mm512_maskz_loadu_ps(lane_mask, attn + first);
  const __m512 width = out.width = _mm512_loadu_ps(lanes.width.data() + first);
  const __m512 height = out.height = _mm512_loadu_ps(lanes.height.data() + first);
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1), minus_one = _mm512_set1_ps(-1);
  const __m512 py = _mm512_sub_ps(_mm512_mul_ps(y, height), half);
  const __m512 px = _mm512_sub_ps(_mm512_mul_ps(x, width), half);
  // (ordered comparisons: a NaN location is outside)
  out.in = _mm512_mask_cmp_ps_mask(lane_mask, py, minus_one, _CMP_GE_OQ) &
           _mm512_cmp_ps_mask(px, minus_one, _CMP_GE_OQ) & _mm512_cmp_ps_mask(py, height, _CMP_LT_OQ) &
           _mm512_cmp_ps_mask(px, width, _CMP_LT_OQ);
  const __m512 y0 = _mm512_maskz_roundscale_ps(0xFFFF, py, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 x0 = _mm512_maskz_roundscale_ps(0xFFFF, px, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  out.ly = _mm512_sub_ps(py, y0);
  out.lx = _mm512_sub_ps(px, x0);
  out.hy = _mm512_sub_ps(one, out.ly);
  out.hx = _mm512_sub_ps(one, out.lx);
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 y0_in = _mm512_mask_cmp_ps_mask(out.in, y0, zero, _CMP_GE_OQ);
  const __mmask16 y1_in = _mm512_mask_cmp_ps_mask(out.in, _mm512_add_ps(y0, one), height, _CMP_LT_OQ);
  const __mmask16 x0_in = _mm512_cmp_ps_mask(x0, zero, _CMP_GE_OQ);
  const __mmask16 x1_in = _mm512_cmp_ps_mask(_mm512_add_ps(x0, one), width, _CMP_LT_OQ);
  out.inside[0] = y0_in & x0_in;
  out.inside[1] = y0_in & x1_in;
  out.inside[2] = y1_in & x0_in;
  out.inside[3] = y1_in & x1_in;
  out.weight[0] = _mm512_mul_ps(out.hy, out.hx);
  out.weight[1] = _mm512_mul_ps(out.hy, out.lx);
  out.weight[2] = _mm512_mul_ps(out.ly, out.hx);
  out.weight[3] = _mm512_mul_ps(out.ly, out.lx);
  // position of the low corner: start + y0 * W + x0 (garbage in lanes that are not in, never read)
  const __m512i row = _mm512_loadu_si512(lanes.row.data() + first);
  const __m512i low = _mm512_add_epi32(
      _mm512_add_epi32(_mm512_loadu_si512(lanes.start.data() + first),
                       _mm512_mullo_epi32(_mm512_maskz_cvttps_epi32(0xFFFF, y0), row)),
      _mm512_maskz_cvttps_epi32(0xFFFF, x0));
  const __m512i one_i = _mm512_set1_epi32(1);
  _mm512_store_si512(out.position[0], low);
  _mm512_store_si512(out.position[1], _mm512_add_epi32(low, one_i));
  _mm512_store_si512(out.position[2], _mm512_add_epi32(low, row));
  _mm512_store_si512(out.position[3], _mm512_add_epi32(_mm512_add_epi32(low, row), one_i));
  for (int k = 0; k < 4; ++k) {
    _mm512_store_ps(out.attn_weight[k], _mm512_mul_ps(out.attn, out.weight[k]));
  }
}

// forward_range for D = 16 * kVectors channels per head: the bilinear setup of 16 samples at a time in vector
// registers, the head's output accumulated in registers.
template <typename scalar_t, int kVectors>
MSDA_AVX512_TARGET void forward_range_avx512(const scalar_t* value, const SampleLanes& lanes, const float* loc,
                                             const float* attn, scalar_t* out, const MsdaSizes& n, int64_t begin,
                                             int64_t end) {
  const int64_t pos_stride = n.M * n.D;
  BilinearBlock bl;
  for (int64_t bq = begin; bq < end; ++bq) {
    const int64_t b = bq / n.Q;
    for (int64_t m = 0; m < n.M; ++m) {
      const scalar_t* v_head = value + b * n.S * pos_stride + m * n.D;
      __m512 acc[kVectors];
      for (int i = 0; i < kVectors; ++i) {
        acc[i] = _mm512_setzero_ps();
      }
      const int64_t sample0 = (bq * n.M + m) * lanes.count;
      for (int64_t block = 0; block < lanes.blocks; ++block) {
        make_bilinear_block(loc + 2 * sample0, attn + sample0, lanes, block, bl);
        for (unsigned in = bl.in; in != 0; in &= in - 1) {
          const int j = __builtin_ctz(in);
          for (int k = 0; k < 4; ++k) {
            if (((bl.inside[k] >> j) & 1) == 0) {
              continue;
            }
            const __m512 w = _mm512_set1_ps(bl.attn_weight[k][j]);
            const scalar_t* src = v_head + bl.position[k][j] * pos_stride;
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
    // (positions in S as int32)
    if (!cpu_ok || n.D % 16 != 0 || n.D > 64 || n.S > INT32_MAX) {
      return false;
    }
    const SampleLanes lanes = make_sample_lanes(shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(), n);
    auto run = [&](auto vectors) {
      parallel_chunks(n.B * n.Q, 32, [&](int64_t begin, int64_t end) {
        forward_range_avx512<scalar_t, decltype(vectors)::value>(v.const_data_ptr<scalar_t>(), lanes,
                                                                 loc.const_data_ptr<float>(),
                                                                 attn.const_data_ptr<float>(),
                                                                 out.mutable_data_ptr<scalar_t>(), n, begin, end);
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
// The backward reads the samples of one head, M * L * P apart from one query to the next: it asks for those of the
// query this far ahead before it needs them.
constexpr int64_t kPrefetchQueries = 8;

// Prefetches the cache lines of p[0, n), for writing if kWrite. (With the kernels' target: GCC drops a call to a
// function that only prefetches when it cannot inline it early.)
template <int kWrite, typename T>
MSDA_AVX512_TARGET inline void prefetch_lines(const T* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 64 / sizeof(T)) {
    __builtin_prefetch(p + i, kWrite);
  }
  __builtin_prefetch(p + n - 1, kWrite);
}

// The 128-bit lanes (a[i0], a[i1], b[i2], b[i3]) for kLanes = _MM_SHUFFLE(i3, i2, i1, i0).
template <int kLanes>
MSDA_AVX512_TARGET inline __m512 shuffle128(__m512 a, __m512 b) {
  return _mm512_maskz_shuffle_f32x4(0xFFFF, a, b, kLanes);
}

// The lane sums of 16 vectors: lane i of the result is the sum of the lanes of a[i] (a transpose-add tree).
MSDA_AVX512_TARGET inline __m512 sum16x16(const __m512 a[16]) {
  __m512 pairs[8], quads[4], octets[2];
  for (int i = 0; i < 8; ++i) {  // 128-bit lane: (a[2i], a[2i+1], a[2i], a[2i+1]) partial sums
    pairs[i] = _mm512_add_ps(_mm512_maskz_unpacklo_ps(0xFFFF, a[2 * i], a[2 * i + 1]),
                             _mm512_maskz_unpackhi_ps(0xFFFF, a[2 * i], a[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lane: (a[4i], ..., a[4i+3]) partial sums
    const __m512d lo = _mm512_castps_pd(pairs[2 * i]), hi = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, lo, hi)),
                             _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, lo, hi)));
  }
  for (int i = 0; i < 2; ++i) {  // 128-bit lanes: two halves of quads[2i], two of quads[2i+1]
    octets[i] = _mm512_add_ps(shuffle128<_MM_SHUFFLE(2, 0, 2, 0)>(quads[2 * i], quads[2 * i + 1]),
                              shuffle128<_MM_SHUFFLE(3, 1, 3, 1)>(quads[2 * i], quads[2 * i + 1]));
  }
  return _mm512_add_ps(shuffle128<_MM_SHUFFLE(2, 0, 2, 0)>(octets[0], octets[1]),
                       shuffle128<_MM_SHUFFLE(3, 1, 3, 1)>(octets[0], octets[1]));
}

// The lanes of <go, v> summed over (their sum is the dot product) for D = 16 * kVectors channels: go widened to
// float32 in go, and (bfloat16) its raw pairs of channels, which one dpbf16 instruction multiplies with 32
// channels of v.
template <typename scalar_t, int kVectors>
MSDA_AVX512_TARGET inline __m512 dot_lanes(const __m512 go[kVectors], const __m512i go_pairs[(kVectors + 1) / 2],
                                           const scalar_t* v) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    __m512 sum = _mm512_mul_ps(go[0], _mm512_loadu_ps(v));
    for (int i = 1; i < kVectors; ++i) {
      sum = _mm512_fmadd_ps(go[i], _mm512_loadu_ps(v + 16 * i), sum);
    }
    return sum;
  } else {
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < (kVectors + 1) / 2; ++i) {
      const __m512i pairs = _mm512_maskz_loadu_epi16(pair_mask(kVectors, i), v + 32 * i);
      sum = _mm512_dpbf16_ps(sum, reinterpret_cast<const __m512bh&>(go_pairs[i]),
                             reinterpret_cast<const __m512bh&>(pairs));
    }
    return sum;
  }
}

// backward_range for D = 16 * kVectors channels: per (query, head), the bilinear setup of 16 samples at a time in
// vector registers, the head's output gradient in registers, grad_value (float32) updated 16 channels at a time,
// and the dot products of 4 samples x 4 corners summed with one transpose-add tree.
template <typename scalar_t, int kVectors>
MSDA_AVX512_TARGET void backward_range_avx512(const scalar_t* grad_out, const scalar_t* value,
                                              const SampleLanes& lanes, const float* loc, const float* attn,
                                              float* grad_value, float* grad_loc, float* grad_attn,
                                              const MsdaSizes& n, int64_t begin, int64_t end) {
  const int64_t pos_stride = n.M * n.D;
  // lanes of (x, y) pairs from 16 x and 16 y gradients: x0, y0, x1, y1, ...
  alignas(64) static constexpr int32_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                          8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave_lo = _mm512_load_si512(kInterleave), interleave_hi = _mm512_load_si512(kInterleave + 16);
  BilinearBlock bl;
  for (int64_t bm = begin; bm < end; ++bm) {
    const int64_t b = bm / n.M, m = bm % n.M;
    const scalar_t* v_head = value + b * n.S * pos_stride + m * n.D;
    float* gv_head = grad_value + b * n.S * pos_stride + m * n.D;
    for (int64_t q = 0; q < n.Q; ++q) {
      const int64_t bqm = (b * n.Q + q) * n.M + m;
      const scalar_t* go_src = grad_out + bqm * n.D;
      __m512 go[kVectors];
      __m512i go_pairs[(kVectors + 1) / 2];
      for (int i = 0; i < kVectors; ++i) {
        go[i] = load16(go_src + 16 * i);
      }
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        for (int i = 0; i < (kVectors + 1) / 2; ++i) {
          go_pairs[i] = _mm512_maskz_loadu_epi16(pair_mask(kVectors, i), go_src + 32 * i);
        }
      }
      const int64_t sample0 = bqm * lanes.count;
      if (q + kPrefetchQueries < n.Q) {
        const int64_t ahead = sample0 + kPrefetchQueries * n.M * lanes.count;
        prefetch_lines<0>(loc + 2 * ahead, 2 * lanes.count);
        prefetch_lines<0>(attn + ahead, lanes.count);
        prefetch_lines<1>(grad_loc + 2 * ahead, 2 * lanes.count);
        prefetch_lines<1>(grad_attn + ahead, lanes.count);
        prefetch_lines<0>(go_src + kPrefetchQueries * n.M * n.D, n.D);
      }
      for (int64_t block = 0; block < lanes.blocks; ++block) {
        make_bilinear_block(loc + 2 * sample0, attn + sample0, lanes, block, bl);
        __m512 sums[4];  // sums[g], 128-bit lane k: corner k of samples 4g..4g+3
        for (int g = 0; g < 4; ++g) {
          if (((bl.in >> (4 * g)) & 0xF) == 0) {
            sums[g] = _mm512_setzero_ps();
            continue;
          }
          __m512 products[16];  // [4 * corner + sample]
          for (int s = 0; s < 4; ++s) {
            const int j = 4 * g + s;
            for (int k = 0; k < 4; ++k) {
              if (((bl.inside[k] >> j) & 1) == 0) {
                products[4 * k + s] = _mm512_setzero_ps();
                continue;
              }
              const int64_t offset = bl.position[k][j] * pos_stride;
              products[4 * k + s] = dot_lanes<scalar_t, kVectors>(go, go_pairs, v_head + offset);
              const __m512 w = _mm512_set1_ps(bl.attn_weight[k][j]);
              float* gv = gv_head + offset;
              for (int i = 0; i < kVectors; ++i) {
                _mm512_storeu_ps(gv + 16 * i, _mm512_fmadd_ps(w, go[i], _mm512_loadu_ps(gv + 16 * i)));
              }
            }
          }
          sums[g] = sum16x16(products);
        }
        // dot[k], lane j: <grad_output, value at corner k of sample j> (0 outside the map)
        const __m512 t0 = shuffle128<_MM_SHUFFLE(1, 0, 1, 0)>(sums[0], sums[1]);
        const __m512 t1 = shuffle128<_MM_SHUFFLE(3, 2, 3, 2)>(sums[0], sums[1]);
        const __m512 t2 = shuffle128<_MM_SHUFFLE(1, 0, 1, 0)>(sums[2], sums[3]);
        const __m512 t3 = shuffle128<_MM_SHUFFLE(3, 2, 3, 2)>(sums[2], sums[3]);
        const __m512 dot[4] = {shuffle128<_MM_SHUFFLE(2, 0, 2, 0)>(t0, t2),
                               shuffle128<_MM_SHUFFLE(3, 1, 3, 1)>(t0, t2),
                               shuffle128<_MM_SHUFFLE(2, 0, 2, 0)>(t1, t3),
                               shuffle128<_MM_SHUFFLE(3, 1, 3, 1)>(t1, t3)};
        // bilinear_value, bilinear_dx and bilinear_dy of the 16 samples; 0 for samples outside the map
        __m512 g_attn = _mm512_mul_ps(bl.weight[0], dot[0]);
        for (int k = 1; k < 4; ++k) {
          g_attn = _mm512_add_ps(g_attn, _mm512_mul_ps(bl.weight[k], dot[k]));
        }
        const __m512 g_x = _mm512_mul_ps(
            bl.attn, _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(bl.hy, _mm512_sub_ps(dot[1], dot[0])),
                                                 _mm512_mul_ps(bl.ly, _mm512_sub_ps(dot[3], dot[2]))),
                                   bl.width));
        const __m512 g_y = _mm512_mul_ps(
            bl.attn, _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(bl.hx, _mm512_sub_ps(dot[2], dot[0])),
                                                 _mm512_mul_ps(bl.lx, _mm512_sub_ps(dot[3], dot[1]))),
                                   bl.height));
        const int64_t first = sample0 + 16 * block;
        _mm512_mask_storeu_ps(grad_attn + first, bl.lanes, _mm512_maskz_mov_ps(bl.in, g_attn));
        // (x, y) pairs of lanes 0-7 and 8-15
        const __m512 g_x_in = _mm512_maskz_mov_ps(bl.in, g_x), g_y_in = _mm512_maskz_mov_ps(bl.in, g_y);
        const __mmask32 pair_lanes = bl.count == 16 ? 0xFFFFFFFFu : (1u << (2 * bl.count)) - 1;
        _mm512_mask_storeu_ps(grad_loc + 2 * first, static_cast<__mmask16>(pair_lanes),
                              _mm512_permutex2var_ps(g_x_in, interleave_lo, g_y_in));
        _mm512_mask_storeu_ps(grad_loc + 2 * first + 16, static_cast<__mmask16>(pair_lanes >> 16),
                              _mm512_permutex2var_ps(g_x_in, interleave_hi, g_y_in));
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
    // (positions in S as int32)
    if (!cpu_ok || n.D % 16 != 0 || n.D > 64 || n.S > INT32_MAX) {
      return false;
    }
    const SampleLanes lanes = make_sample_lanes(shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(), n);
    auto run = [&](auto vectors) {
      parallel_chunks(n.B * n.M, 1, [&](int64_t begin, int64_t end) {
        backward_range_avx512<scalar_t, decltype(vectors)::value>(
            go.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), lanes, loc.const_data_ptr<float>(),
            attn.const_data_ptr<float>(),
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
