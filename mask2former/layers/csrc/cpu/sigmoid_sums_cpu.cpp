// mask2former::sigmoid_and_sums on the CPU: for float32 logits [Q, P], in one pass,
//   sigmoid(x) [Q, P],  sum over P of softplus(x) [Q],  sum over P of sigmoid(x) [Q].
// The Hungarian matcher's mask costs need exactly these: the sigmoid BCE cost is a softplus row sum minus a
// product with the targets, the dice cost a product of the sigmoid with the targets and the sigmoid's row sum.
// Forward only (the matcher runs under no_grad).
//
// With e = exp(-|x|) (in (0, 1]): softplus(x) = max(x, 0) + log(1 + e), sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e).
// exp is computed in plain arithmetic that the compiler vectorises (range reduction to [-ln2/2, ln2/2], a
// polynomial, the power of two put into the exponent bits), and the logs are taken of products: each lane
// multiplies the factors 1 + e (each in (1, 2]) of kFactors elements before one log, so a row of P elements
// takes P / kFactors logs instead of P. Against float64 the row sums agree to float32 summation rounding.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

#include "expf_reduced.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__linux__)
#define SIGMOID_SUMS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SIGMOID_SUMS_CPU_CLONES
#endif

namespace mask2former {

namespace {

constexpr int kLanes = 16;     // elements processed together (one AVX-512 register of float32)
constexpr int kFactors = 32;  // factors 1 + e <= 2 per lane before a log: the product stays below 2^32
constexpr int32_t kBits87 = 0x42ae0000;  // the bit pattern of 87.0f

// exp(-a) for a = |x| >= 0, within 2 float32 ulp, for a <= 87; a larger a (also inf and NaN) is read as 87,
// whose exp(-87) ~ 1.6e-38 stands in for a denormal or 0 (which changes neither log(1 + e) nor the sigmoid
// beyond float32's smallest normal values). The clamp compares the bit patterns as integers (for non-negative
// floats their order): a float comparison there kept GCC from vectorising the loop for AVX2.
inline float exp_negative_abs(float a) {
  int32_t a_bits;
  std::memcpy(&a_bits, &a, sizeof a);
  a_bits = std::min(a_bits, kBits87);
  float y;
  std::memcpy(&y, &a_bits, sizeof y);
  y = -y;
  float n, p;
  expf_reduced(y, n, p);  // y = n ln2 + r, p = exp(r)
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

struct RowSums {
  float softplus;
  float sigmoid;
};

// One row: sigmoid into `out`, and the two sums. Lanes keep partial sums and products so that the loop
// vectorises without reassociating float additions.
SIGMOID_SUMS_CPU_CLONES RowSums row_sigmoid_and_sums(const float* __restrict__ x, float* __restrict__ out,
                                                     int64_t P) {
  float relu[kLanes] = {}, sig[kLanes] = {}, logs[kLanes] = {}, product[kLanes];
  std::fill(product, product + kLanes, 1.0f);
  const int64_t full = P - P % kLanes;
  int in_product = 0;
  for (int64_t p = 0; p < full; p += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float v = x[p + j];
      const float e = exp_negative_abs(std::fabs(v));
      const float numerator = v >= 0.0f ? 1.0f : e;
      const float s = numerator / (1.0f + e);
      out[p + j] = s;
      sig[j] += s;
      relu[j] += std::max(v, 0.0f);
      product[j] *= 1.0f + e;
    }
    if (++in_product == kFactors) {
      for (int j = 0; j < kLanes; ++j) {
        logs[j] += std::log(product[j]);
        product[j] = 1.0f;
      }
      in_product = 0;
    }
  }
  RowSums sums{0.0f, 0.0f};
  for (int j = 0; j < kLanes; ++j) {
    sums.softplus += relu[j] + logs[j] + std::log(product[j]);
    sums.sigmoid += sig[j];
  }
  for (int64_t p = full; p < P; ++p) {
    const float v = x[p];
    const float e = exp_negative_abs(std::fabs(v));
    const float s = (v >= 0.0f ? 1.0f : e) / (1.0f + e);
    out[p] = s;
    sums.sigmoid += s;
    sums.softplus += std::max(v, 0.0f) + std::log1p(e);
  }
  return sums;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_and_sums_cpu(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat,
              "sigmoid_and_sums: logits must be float32 [Q, P], got ", logits.scalar_type(), " ", logits.sizes());
  const int64_t Q = logits.size(0), P = logits.size(1);
  const at::Tensor x = logits.contiguous();
  at::Tensor sigmoid = at::empty({Q, P}, logits.options());
  at::Tensor softplus_sum = at::empty({Q}, logits.options());
  at::Tensor sigmoid_sum = at::empty({Q}, logits.options());
  const float* src = x.const_data_ptr<float>();
  float* dst = sigmoid.mutable_data_ptr<float>();
  float* softplus_out = softplus_sum.mutable_data_ptr<float>();
  float* sigmoid_out = sigmoid_sum.mutable_data_ptr<float>();
  at::parallel_for(0, Q, 1, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const RowSums sums = row_sigmoid_and_sums(src + q * P, dst + q * P, P);
      softplus_out[q] = sums.softplus;
      sigmoid_out[q] = sums.sigmoid;
    }
  });
  return {sigmoid, softplus_sum, sigmoid_sum};
}

}  // namespace

}  // namespace mask2former

TORCH_LIBRARY_FRAGMENT(mask2former, m) {
  m.def("sigmoid_and_sums(Tensor logits) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("sigmoid_and_sums", &mask2former::sigmoid_and_sums_cpu);
}
