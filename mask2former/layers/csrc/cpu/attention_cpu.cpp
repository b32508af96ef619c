// mask2former::attention and mask2former::attention_backward on the CPU: softmax(scale * q k^T, masked) v, what
// F.scaled_dot_product_attention(q, k, v, attn_mask=allowed) computes (no dropout), and its gradients.
//   q [B, M, Lq, D], k and v [B, M, Lk, D] (any strides), allowed bool [B or 1, 1, Lq, Lk] (True = may attend,
//   the same for every head) or None -> out [B, M, Lq, D] in q's dtype, lse [B, M, Lq] (the row log-sum-exp of
//   the scaled, masked scores; float32, float64 for float64 inputs).
// float32 and bfloat16 inputs are computed in float32 (bfloat16 is read and written as bfloat16), float64 in
// float64 (for gradcheck). A query row with no allowed key is refused (SDPA returns NaN there).
//
// Why: the Transformer decoder's attention has short heads (D = 32) and long key rows (up to 2304 keys), where
// PyTorch's batched GEMMs reach a third of the CPU's float32 peak, and its bfloat16 backward on a CPU without
// AMX is slower still. Here each (batch, head) pair is one task (no atomics: a task owns its dK, dV), and the
// head's q, k, v are first copied into float buffers padded to whole tiles (zeros), k and v also transposed
// (16 x 16 blocks through vector shuffles), so that every product is
// one register-blocked micro-kernel (`tile_product`: 8 rows x 2 vectors of accumulators, two vector loads and
// 8 broadcast loads per 16 FMAs).
// The mask becomes an additive bias (0 or -inf) per batch, shared by the heads.
//   forward, per block of 8 query rows: S = (scale q) k^T + bias for the whole key row, row max,
//     P = exp(S - max), O = P v / rowsum(P), lse = max + log(rowsum(P)).
//   backward, per block of 2 vectors of keys, for all query rows: P = exp(S - lse) recomputed, dP = dO v^T,
//     dS = P * (dP - rowsum(dO * O)); dV = P^T dO and dK = dS^T (scale q) complete for the block (written
//     once), dQ += dS k (a [Lq, D] buffer that stays in L1), scaled at the end.
// The vectors are GCC vector extensions (64 bytes: 16 float or 8 double lanes), compiled once per instruction
// set by `target_clones` (AVX-512, AVX2, baseline); exp is a polynomial for float32 and std::exp for float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "expf_reduced.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors are only passed between always-inlined functions

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__linux__)
#define ATTENTION_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ATTENTION_CPU_CLONES
#endif
#define ATTENTION_INLINE inline __attribute__((always_inline))

namespace mask2former {

namespace {

template <typename T>
struct VectorOf {
  typedef T type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VectorOf<T>::type;
template <typename T>
constexpr int kLanes = static_cast<int>(64 / sizeof(T));
template <typename T>
constexpr int kTile = 2 * kLanes<T>;  // columns of a micro-tile: keys, or channels of a head
constexpr int kRows = 8;              // rows of a micro-tile

template <typename T>
ATTENTION_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
ATTENTION_INLINE void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}

template <typename T>
ATTENTION_INLINE Vec<T> splat(T x) {
  // (not for hot loops: GCC 12 adds 0 before broadcasting, and builds -0 + x or x - 0 lane by lane)
  const Vec<T> zero = {};
  return zero + x;
}

// exp(x) per lane: 0 for x below float32's normal range (also -inf), x above 88 read as 88. Float32: Cephes'
// expf polynomial after the range reduction x = n ln2 + r, |r| <= ln2 / 2, within 2 ulp.
template <typename T>
ATTENTION_INLINE Vec<T> exp_lanes(Vec<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    typedef int32_t Int __attribute__((vector_size(64)));
    const Vec<T> lo = splat(-87.3f), hi = splat(88.3f);
    const Int underflow = x < lo;
    x = x < lo ? lo : x;
    x = x > hi ? hi : x;
    Vec<T> n, p;
    expf_reduced(x, n, p);  // x = n ln2 + r, p = exp(r)
    const Int bits = (__builtin_convertvector(n, Int) + 127) << 23;  // 2^n, n in [-126, 127]
    Vec<T> power;
    std::memcpy(&power, &bits, sizeof power);
    return underflow ? splat(0.0f) : p * power;
  } else {
    Vec<T> y;
    for (int l = 0; l < kLanes<T>; ++l) y[l] = std::exp(x[l]);
    return y;
  }
}

template <typename T>
ATTENTION_INLINE T lane_sum(Vec<T> v) {
  T s = 0;
  for (int l = 0; l < kLanes<T>; ++l) s += v[l];
  return s;
}

template <typename T>
ATTENTION_INLINE T lane_max(Vec<T> v) {
  T m = v[0];
  for (int l = 1; l < kLanes<T>; ++l) m = v[l] > m ? v[l] : m;
  return m;
}

// acc[r][c] = sum over k < depth of a[r * a_row + k * a_k] * b[k * ldb + c * kLanes .. + kLanes], r < kRows:
// 8 rows of a times a [depth, kTile] panel of b.
template <typename T>
struct Tile {
  Vec<T> acc[kRows][2];
};

template <typename T>
ATTENTION_INLINE Tile<T> tile_product(const T* a, int64_t a_row, int64_t a_k, const T* b, int64_t ldb,
                                      int64_t depth) {
  Tile<T> t;
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) t.acc[r][0] = t.acc[r][1] = splat(T(0));
  for (int64_t k = 0; k < depth; ++k) {
    const Vec<T> b0 = load(b + k * ldb), b1 = load(b + k * ldb + kLanes<T>);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const T ar = a[r * a_row + k * a_k];  // vector * scalar: one broadcast load (see splat)
      t.acc[r][0] += b0 * ar;
      t.acc[r][1] += b1 * ar;
    }
  }
  return t;
}

// One (batch, head) slice of a [B, M, L, D] tensor with arbitrary strides.
template <typename S>
struct Slices {
  const S* data;
  int64_t stride_b, stride_m, stride_l, stride_d;
  const S* head(int64_t b, int64_t m) const { return data + b * stride_b + m * stride_m; }
};

template <typename S>
Slices<S> slices(const at::Tensor& t) {
  return {t.const_data_ptr<S>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Sizes of one call; padded sizes are whole tiles.
struct Shape {
  int64_t B, M, Lq, Lk, D;
  int64_t Lq_pad, Lk_pad, D_pad;
  double scale;
  const void* bias;  // [B or 1, Lq, Lk_pad] of the compute type: 0 where allowed, -inf elsewhere and in the padding
  int64_t bias_stride_b;
};

// dst [rows_pad, D_pad] (row-major) = factor * src head [rows, D], zeros elsewhere
template <typename S, typename T>
ATTENTION_INLINE void copy_rows(const S* src, int64_t stride_l, int64_t stride_d, int64_t rows, int64_t D,
                                T factor, T* dst, int64_t rows_pad, int64_t D_pad) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t d = 0; d < D; ++d) dst[i * D_pad + d] = factor * static_cast<T>(src[i * stride_l + d * stride_d]);
    std::fill(dst + i * D_pad + D, dst + (i + 1) * D_pad, T(0));
  }
  std::fill(dst + rows * D_pad, dst + rows_pad * D_pad, T(0));
}

// Lane l of the two rows r (upper) and r + h (lower) of a block-transpose round h: the upper row takes the lower
// row's left half of each 2h block (shuffle index kLanes + l - h), the lower row the upper row's right half.
// (clang's __builtin_shufflevector; GCC's __builtin_shuffle, which GCC has had since 4.7, with the indices as a
// vector of integers as wide as T)
template <typename T, int h, size_t... lane>
ATTENTION_INLINE void swap_halves(Vec<T>& upper, Vec<T>& lower, std::index_sequence<lane...>) {
  constexpr int L = kLanes<T>;
  const Vec<T> u = upper, w = lower;
#if defined(__clang__)
  upper = __builtin_shufflevector(u, w, ((lane & h) ? L + static_cast<int>(lane) - h : static_cast<int>(lane))...);
  lower = __builtin_shufflevector(u, w, ((lane & h) ? L + static_cast<int>(lane) : static_cast<int>(lane) + h)...);
#else
  using Index = Vec<std::conditional_t<sizeof(T) == 4, int32_t, int64_t>>;
  upper = __builtin_shuffle(u, w, Index{((lane & h) ? L + static_cast<int>(lane) - h : static_cast<int>(lane))...});
  lower = __builtin_shuffle(u, w, Index{((lane & h) ? L + static_cast<int>(lane) : static_cast<int>(lane) + h)...});
#endif
}

// Round h of the transpose of a kLanes x kLanes block: the off-diagonal h x h blocks of every 2h x 2h block
// swapped. Rounds h = kLanes / 2, ..., 1 transpose the block.
template <typename T, int h>
ATTENTION_INLINE void transpose_round(Vec<T> (&rows)[kLanes<T>]) {
#pragma GCC unroll 16
  for (int r = 0; r < kLanes<T>; ++r) {
    if (!(r & h)) swap_halves<T, h>(rows[r], rows[r + h], std::make_index_sequence<kLanes<T>>{});
  }
}

template <typename T>
ATTENTION_INLINE void transpose_block(Vec<T> (&rows)[kLanes<T>]) {
  if constexpr (kLanes<T> == 16) transpose_round<T, 8>(rows);
  transpose_round<T, 4>(rows);
  transpose_round<T, 2>(rows);
  transpose_round<T, 1>(rows);
}

// dst[d * rows_pad + i] = src[i * stride_l + d * stride_d] for i in [i0, i1), d in [d0, d1)
template <typename S, typename T>
ATTENTION_INLINE void transpose_scalar(const S* src, int64_t stride_l, int64_t stride_d, int64_t i0, int64_t i1,
                                       int64_t d0, int64_t d1, T* dst, int64_t rows_pad) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t d = d0; d < d1; ++d) dst[d * rows_pad + i] = static_cast<T>(src[i * stride_l + d * stride_d]);
  }
}

// dst [D_pad, rows_pad] = src head [rows, D] transposed, zeros elsewhere. With contiguous channels, by
// kLanes x kLanes blocks in registers; the remainder (and other strides) element by element.
template <typename S, typename T>
ATTENTION_INLINE void copy_transposed(const S* src, int64_t stride_l, int64_t stride_d, int64_t rows, int64_t D,
                                      T* dst, int64_t rows_pad, int64_t D_pad) {
  constexpr int L = kLanes<T>;
  for (int64_t d = 0; d < D; ++d) std::fill(dst + d * rows_pad + rows, dst + (d + 1) * rows_pad, T(0));
  std::fill(dst + D * rows_pad, dst + D_pad * rows_pad, T(0));
  const int64_t block_rows = stride_d == 1 ? rows - rows % L : 0;
  const int64_t block_D = stride_d == 1 ? D - D % L : 0;
  for (int64_t i0 = 0; i0 < block_rows; i0 += L) {
    for (int64_t d0 = 0; d0 < block_D; d0 += L) {
      Vec<T> block[L];
#pragma GCC unroll 16
      for (int r = 0; r < L; ++r) {
        const S* row = src + (i0 + r) * stride_l + d0;
#pragma GCC unroll 16
        for (int l = 0; l < L; ++l) block[r][l] = static_cast<T>(row[l]);
      }
      transpose_block<T>(block);
#pragma GCC unroll 16
      for (int l = 0; l < L; ++l) store(dst + (d0 + l) * rows_pad + i0, block[l]);
    }
  }
  transpose_scalar(src, stride_l, stride_d, 0, block_rows, block_D, D, dst, rows_pad);
  transpose_scalar(src, stride_l, stride_d, block_rows, rows, 0, D, dst, rows_pad);
}

template <typename S>
struct ForwardArgs {
  Shape shape;
  Slices<S> q, k, v;
  S* out;           // [B, M, Lq, D]
  void* lse;        // [B, M, Lq] of the compute type
  uint8_t* no_key;  // [B * M]: set to 1 when a query row of the head has no allowed key
};

template <typename S, typename T>
ATTENTION_INLINE void forward_heads(const ForwardArgs<S>& a, int64_t begin, int64_t end) {
  const Shape& s = a.shape;
  const int64_t Lq = s.Lq, Lk = s.Lk, D = s.D, Lqp = s.Lq_pad, Lkp = s.Lk_pad, Dp = s.D_pad;
  std::vector<T> q(Lqp * Dp), kt(Dp * Lkp), v(Lkp * Dp), scores(kRows * Lkp);
  T* lse_all = static_cast<T*>(a.lse);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / s.M, m = task % s.M;
    copy_rows(a.q.head(b, m), a.q.stride_l, a.q.stride_d, Lq, D, static_cast<T>(s.scale), q.data(), Lqp, Dp);
    copy_transposed(a.k.head(b, m), a.k.stride_l, a.k.stride_d, Lk, D, kt.data(), Lkp, Dp);
    copy_rows(a.v.head(b, m), a.v.stride_l, a.v.stride_d, Lk, D, T(1), v.data(), Lkp, Dp);
    const T* bias = static_cast<const T*>(s.bias) + b * s.bias_stride_b;  // [Lq, Lkp]
    S* out = a.out + task * Lq * D;
    T* lse = lse_all + task * Lq;
    for (int64_t i0 = 0; i0 < Lqp; i0 += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, Lq - i0);
      const Vec<T> minus_inf = splat(-std::numeric_limits<T>::infinity());
      Vec<T> row_max[kRows];
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) row_max[r] = minus_inf;
      for (int64_t j0 = 0; j0 < Lkp; j0 += kTile<T>) {  // S [8, Lk_pad], blocked keys at -inf
        const Tile<T> t = tile_product(q.data() + i0 * Dp, Dp, 1, kt.data() + j0, Lkp, Dp);
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r) {  // padding rows read the last row's bias and are dropped below
          const T* row_bias = bias + std::min(i0 + r, Lq - 1) * Lkp;
#pragma GCC unroll 2
          for (int c = 0; c < 2; ++c) {
            const int64_t j = j0 + c * kLanes<T>;
            const Vec<T> x = t.acc[r][c] + load(row_bias + j);
            row_max[r] = x > row_max[r] ? x : row_max[r];
            store(scores.data() + r * Lkp + j, x);
          }
        }
      }
      T max_of_row[kRows];  // (constant indices: row_max stays in registers in the loop above)
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) max_of_row[r] = lane_max<T>(row_max[r]);
      T inverse_sum[kRows] = {};
      for (int r = 0; r < rows; ++r) {  // P = exp(S - max) in place; padding rows stay 0
        T* p = scores.data() + r * Lkp;
        const T max = max_of_row[r];
        if (max == -std::numeric_limits<T>::infinity()) {
          a.no_key[task] = 1;
          std::memset(p, 0, sizeof(T) * Lkp);
          continue;
        }
        Vec<T> sum = splat(T(0));
        for (int64_t j = 0; j < Lkp; j += kLanes<T>) {
          const Vec<T> e = exp_lanes<T>(load(p + j) - max);
          store(p + j, e);
          sum += e;
        }
        const T total = lane_sum<T>(sum);
        inverse_sum[r] = T(1) / total;
        lse[i0 + r] = max + std::log(total);
      }
      for (int r = rows; r < kRows; ++r) std::memset(scores.data() + r * Lkp, 0, sizeof(T) * Lkp);
      for (int64_t c0 = 0; c0 < Dp; c0 += kTile<T>) {  // O = P v / rowsum(P)
        const Tile<T> t = tile_product(scores.data(), Lkp, 1, v.data() + c0, Dp, Lkp);
        T o[kRows][kTile<T>];
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r) {
          store(o[r], t.acc[r][0]);
          store(o[r] + kLanes<T>, t.acc[r][1]);
        }
        for (int r = 0; r < rows; ++r) {
          for (int64_t c = c0; c < std::min(c0 + kTile<T>, D); ++c) {
            out[(i0 + r) * D + c] = static_cast<S>(o[r][c - c0] * inverse_sum[r]);
          }
        }
      }
    }
  }
}

template <typename S>
struct BackwardArgs {
  Shape shape;
  Slices<S> grad_out, q, k, v, out;
  const void* lse;  // [B, M, Lq] of the compute type
  S *grad_q, *grad_k, *grad_v;  // [B, M, L, D]
};

// The [rows, D] head slice `dst` (contiguous) = factor * buffer [rows_pad, D_pad]
template <typename S, typename T>
ATTENTION_INLINE void write_rows(const T* buffer, int64_t rows, int64_t D, int64_t D_pad, T factor, S* dst) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t d = 0; d < D; ++d) dst[i * D + d] = static_cast<S>(factor * buffer[i * D_pad + d]);
  }
}

template <typename S, typename T>
ATTENTION_INLINE void backward_heads(const BackwardArgs<S>& a, int64_t begin, int64_t end) {
  const Shape& s = a.shape;
  const int64_t Lq = s.Lq, Lk = s.Lk, D = s.D, Lqp = s.Lq_pad, Lkp = s.Lk_pad, Dp = s.D_pad;
  constexpr int64_t tile = kTile<T>;
  std::vector<T> q(Lqp * Dp), grad_out(Lqp * Dp), out(Lqp * Dp), kt(Dp * Lkp), k(Lkp * Dp), vt(Dp * Lkp);
  std::vector<T> p(Lqp * tile), ds(Lqp * tile), grad_q(Lqp * Dp), grad_k(Lkp * Dp), grad_v(Lkp * Dp);
  std::vector<T> lse(Lqp), delta(Lqp);
  const T* lse_all = static_cast<const T*>(a.lse);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / s.M, m = task % s.M;
    const T scale = static_cast<T>(s.scale);
    copy_rows(a.q.head(b, m), a.q.stride_l, a.q.stride_d, Lq, D, scale, q.data(), Lqp, Dp);
    copy_rows(a.grad_out.head(b, m), a.grad_out.stride_l, a.grad_out.stride_d, Lq, D, T(1), grad_out.data(), Lqp,
              Dp);
    copy_rows(a.out.head(b, m), a.out.stride_l, a.out.stride_d, Lq, D, T(1), out.data(), Lqp, Dp);
    copy_transposed(a.k.head(b, m), a.k.stride_l, a.k.stride_d, Lk, D, kt.data(), Lkp, Dp);
    copy_rows(a.k.head(b, m), a.k.stride_l, a.k.stride_d, Lk, D, T(1), k.data(), Lkp, Dp);
    copy_transposed(a.v.head(b, m), a.v.stride_l, a.v.stride_d, Lk, D, vt.data(), Lkp, Dp);
    const T* bias = static_cast<const T*>(s.bias) + b * s.bias_stride_b;  // [Lq, Lkp]
    for (int64_t i = 0; i < Lqp; ++i) {  // rowsum(dO * O); padding rows: lse +inf gives P = 0
      T sum = 0;
      for (int64_t d = 0; d < Dp; ++d) sum += grad_out[i * Dp + d] * out[i * Dp + d];
      delta[i] = sum;
      lse[i] = i < Lq ? lse_all[task * Lq + i] : std::numeric_limits<T>::infinity();
    }
    std::fill(grad_q.begin(), grad_q.end(), T(0));
    for (int64_t j0 = 0; j0 < Lkp; j0 += tile) {
      for (int64_t i0 = 0; i0 < Lqp; i0 += kRows) {  // P and dS [Lq_pad, tile] of this key block
        // (one tile live at a time: two would not fit in the registers)
        const Tile<T> st = tile_product(q.data() + i0 * Dp, Dp, 1, kt.data() + j0, Lkp, Dp);
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r) {
          const int64_t i = i0 + r;
          const T* row_bias = bias + std::min(i, Lq - 1) * Lkp + j0;
#pragma GCC unroll 2
          for (int c = 0; c < 2; ++c) {
            const Vec<T> x = st.acc[r][c] + load(row_bias + c * kLanes<T>) - lse[i];
            store(p.data() + i * tile + c * kLanes<T>, exp_lanes<T>(x));
          }
        }
        const Tile<T> dpt = tile_product(grad_out.data() + i0 * Dp, Dp, 1, vt.data() + j0, Lkp, Dp);
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r) {
          const int64_t i = i0 + r;
#pragma GCC unroll 2
          for (int c = 0; c < 2; ++c) {
            const int64_t offset = i * tile + c * kLanes<T>;
            store(ds.data() + offset, load(p.data() + offset) * (dpt.acc[r][c] - delta[i]));
          }
        }
      }
      for (int64_t k0 = 0; k0 < tile; k0 += kRows) {  // dV = P^T dO, dK = dS^T (scale q), rows j0 + k0 ..
        for (int64_t c0 = 0; c0 < Dp; c0 += tile) {
          const Tile<T> dv = tile_product(p.data() + k0, 1, tile, grad_out.data() + c0, Dp, Lqp);
#pragma GCC unroll 8
          for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
            for (int c = 0; c < 2; ++c) store(grad_v.data() + (j0 + k0 + r) * Dp + c0 + c * kLanes<T>, dv.acc[r][c]);
          }
          const Tile<T> dk = tile_product(ds.data() + k0, 1, tile, q.data() + c0, Dp, Lqp);
#pragma GCC unroll 8
          for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
            for (int c = 0; c < 2; ++c) store(grad_k.data() + (j0 + k0 + r) * Dp + c0 + c * kLanes<T>, dk.acc[r][c]);
          }
        }
      }
      for (int64_t i0 = 0; i0 < Lqp; i0 += kRows) {  // dQ += dS k (scaled at the end)
        for (int64_t c0 = 0; c0 < Dp; c0 += tile) {
          const Tile<T> dq = tile_product(ds.data() + i0 * tile, tile, 1, k.data() + j0 * Dp + c0, Dp, tile);
#pragma GCC unroll 8
          for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
            for (int c = 0; c < 2; ++c) {
              T* dst = grad_q.data() + (i0 + r) * Dp + c0 + c * kLanes<T>;
              store(dst, load(dst) + dq.acc[r][c]);
            }
          }
        }
      }
    }
    write_rows(grad_q.data(), Lq, D, Dp, scale, a.grad_q + task * Lq * D);
    write_rows(grad_k.data(), Lk, D, Dp, T(1), a.grad_k + task * Lk * D);
    write_rows(grad_v.data(), Lk, D, Dp, T(1), a.grad_v + task * Lk * D);
  }
}

// One compiled function per input dtype and instruction set (target_clones does not take templates).
ATTENTION_CPU_CLONES void forward_range(const ForwardArgs<float>& a, int64_t begin, int64_t end) {
  forward_heads<float, float>(a, begin, end);
}
ATTENTION_CPU_CLONES void forward_range(const ForwardArgs<c10::BFloat16>& a, int64_t begin, int64_t end) {
  forward_heads<c10::BFloat16, float>(a, begin, end);
}
ATTENTION_CPU_CLONES void forward_range(const ForwardArgs<double>& a, int64_t begin, int64_t end) {
  forward_heads<double, double>(a, begin, end);
}
ATTENTION_CPU_CLONES void backward_range(const BackwardArgs<float>& a, int64_t begin, int64_t end) {
  backward_heads<float, float>(a, begin, end);
}
ATTENTION_CPU_CLONES void backward_range(const BackwardArgs<c10::BFloat16>& a, int64_t begin, int64_t end) {
  backward_heads<c10::BFloat16, float>(a, begin, end);
}
ATTENTION_CPU_CLONES void backward_range(const BackwardArgs<double>& a, int64_t begin, int64_t end) {
  backward_heads<double, double>(a, begin, end);
}

int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }

at::ScalarType compute_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename T>
void fill_bias(const bool* allowed, int64_t rows, int64_t Lk, int64_t Lk_pad, T* bias) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const T value[2] = {minus_inf, T(0)};  // a lookup, not a branch: a random mask would mispredict half of them
  for (int64_t i = 0; i < rows; ++i) {
    const bool* row_allowed = allowed + i * Lk;
    T* row_bias = bias + i * Lk_pad;
    for (int64_t j = 0; j < Lk; ++j) row_bias[j] = value[row_allowed[j]];
    std::fill(row_bias + Lk, row_bias + Lk_pad, minus_inf);
  }
}

// Checks the arguments; the sizes, and `allowed` as an additive bias [B or 1, Lq, Lk_pad] (0 where allowed, all
// keys when None; -inf elsewhere and in the padding) in `bias`.
Shape check_and_shape(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const std::optional<at::Tensor>& allowed, double scale, at::Tensor& bias) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kDouble,
              op, ": q must be float32, bfloat16 or float64, got ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": k and v must have q's dtype ", q.scalar_type(), ", got ", k.scalar_type(), " and ", v.scalar_type());
  TORCH_CHECK(q.dim() == 4, op, ": q must be [B, M, Lq, D], got ", q.sizes());
  TORCH_CHECK(k.dim() == 4 && k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), op,
              ": k must be [B, M, Lk, D] with q's B, M, D ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must have k's shape ", k.sizes(), ", got ", v.sizes());
  Shape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), 0, 0, 0, scale, nullptr, 0};
  TORCH_CHECK(s.Lq > 0 && s.Lk > 0 && s.D > 0, op, ": q and k need at least one row and channel, got q ",
              q.sizes(), ", k ", k.sizes());
  const int64_t tile = q.scalar_type() == at::kDouble ? kTile<double> : kTile<float>;
  s.Lq_pad = round_up(s.Lq, kRows);
  s.Lk_pad = round_up(s.Lk, tile);
  s.D_pad = round_up(s.D, tile);
  const auto bias_options = q.options().dtype(compute_dtype(q));
  const double minus_inf = -std::numeric_limits<double>::infinity();
  if (allowed.has_value()) {
    const at::Tensor& mask = *allowed;
    TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": allowed must be bool, got ", mask.scalar_type());
    TORCH_CHECK(mask.dim() == 4 && (mask.size(0) == s.B || mask.size(0) == 1) && mask.size(1) == 1 &&
                    mask.size(2) == s.Lq && mask.size(3) == s.Lk,
                op, ": allowed must be [B or 1, 1, Lq, Lk] = [", s.B, ", 1, ", s.Lq, ", ", s.Lk, "], got ",
                mask.sizes());
    bias = at::empty({mask.size(0), s.Lq, s.Lk_pad}, bias_options);
    const at::Tensor rows = mask.reshape({-1, s.Lk}).contiguous();  // [(B or 1) * Lq, Lk]
    AT_DISPATCH_FLOATING_TYPES(bias.scalar_type(), "attention_bias", [&] {
      fill_bias(rows.const_data_ptr<bool>(), rows.size(0), s.Lk, s.Lk_pad, bias.mutable_data_ptr<scalar_t>());
    });
  } else {
    bias = at::full({1, s.Lq, s.Lk_pad}, minus_inf, bias_options);
    bias.narrow(2, 0, s.Lk).fill_(0);
  }
  s.bias = bias.const_data_ptr();
  s.bias_stride_b = bias.size(0) == 1 ? 0 : s.Lq * s.Lk_pad;
  return s;
}

template <typename S>
void run_forward(const Shape& s, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                 at::Tensor& lse, std::vector<uint8_t>& no_key) {
  const ForwardArgs<S> args{s,
                            slices<S>(q),
                            slices<S>(k),
                            slices<S>(v),
                            out.mutable_data_ptr<S>(),
                            lse.mutable_data_ptr(),
                            no_key.data()};
  at::parallel_for(0, s.B * s.M, 1, [&](int64_t begin, int64_t end) { forward_range(args, begin, end); });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const std::optional<at::Tensor>& allowed, double scale) {
  at::Tensor bias;
  const Shape s = check_and_shape("attention", q, k, v, allowed, scale, bias);
  at::Tensor out = at::empty({s.B, s.M, s.Lq, s.D}, q.options());
  at::Tensor lse = at::empty({s.B, s.M, s.Lq}, q.options().dtype(compute_dtype(q)));
  std::vector<uint8_t> no_key(s.B * s.M, 0);
  if (q.scalar_type() == at::kFloat) {
    run_forward<float>(s, q, k, v, out, lse, no_key);
  } else if (q.scalar_type() == at::kBFloat16) {
    run_forward<c10::BFloat16>(s, q, k, v, out, lse, no_key);
  } else {
    run_forward<double>(s, q, k, v, out, lse, no_key);
  }
  for (int64_t task = 0; task < s.B * s.M; ++task) {
    TORCH_CHECK(!no_key[task], "attention: allowed has a query row with no allowed key (batch ", task / s.M,
                "), where softmax is undefined (SDPA returns NaN); allow at least one key per row");
  }
  return {out, lse};
}

template <typename S>
void run_backward(const Shape& s, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& grad_q,
                  at::Tensor& grad_k, at::Tensor& grad_v) {
  const BackwardArgs<S> args{s,
                             slices<S>(grad_out),
                             slices<S>(q),
                             slices<S>(k),
                             slices<S>(v),
                             slices<S>(out),
                             lse.const_data_ptr(),
                             grad_q.mutable_data_ptr<S>(),
                             grad_k.mutable_data_ptr<S>(),
                             grad_v.mutable_data_ptr<S>()};
  at::parallel_for(0, s.B * s.M, 1, [&](int64_t begin, int64_t end) { backward_range(args, begin, end); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& allowed, const at::Tensor& out, const at::Tensor& lse, double scale) {
  at::Tensor bias;
  const Shape s = check_and_shape("attention_backward", q, k, v, allowed, scale, bias);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && grad_out.scalar_type() == q.scalar_type(),
              "attention_backward: grad_out must have q's shape and dtype ", q.sizes(), " ", q.scalar_type(),
              ", got ", grad_out.sizes(), " ", grad_out.scalar_type());
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type(),
              "attention_backward: out must have q's shape and dtype ", q.sizes(), " ", q.scalar_type(), ", got ",
              out.sizes(), " ", out.scalar_type());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == s.B && lse.size(1) == s.M && lse.size(2) == s.Lq &&
                  lse.scalar_type() == compute_dtype(q),
              "attention_backward: lse must be ", compute_dtype(q), " [B, M, Lq] = [", s.B, ", ", s.M, ", ", s.Lq,
              "], got ", lse.scalar_type(), " ", lse.sizes());
  const at::Tensor lse_contiguous = lse.contiguous();
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::empty(k.sizes(), k.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options());
  if (q.scalar_type() == at::kFloat) {
    run_backward<float>(s, grad_out, q, k, v, out, lse_contiguous, grad_q, grad_k, grad_v);
  } else if (q.scalar_type() == at::kBFloat16) {
    run_backward<c10::BFloat16>(s, grad_out, q, k, v, out, lse_contiguous, grad_q, grad_k, grad_v);
  } else {
    run_backward<double>(s, grad_out, q, k, v, out, lse_contiguous, grad_q, grad_k, grad_v);
  }
  return {grad_q, grad_k, grad_v};
}

}  // namespace

}  // namespace mask2former

TORCH_LIBRARY_FRAGMENT(mask2former, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor? allowed, float scale) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? allowed, Tensor out, Tensor lse, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("attention", &mask2former::attention_cpu);
  m.impl("attention_backward", &mask2former::attention_backward_cpu);
}
