// The core of the float32 exp of the CPU kernels (attention_cpu.cpp, sigmoid_sums_cpu.cpp), for a float or a GCC
// vector of floats: exp(x) = 2^n exp(r) with x = n ln2 + r, |r| <= ln2 / 2.
//   n: x / ln2 rounded to the nearest integer by adding and subtracting 1.5 * 2^23 (plain arithmetic, which
//      vectorises where std::floor or std::nearbyint may become library calls);
//   exp(r): Cephes' expf minimax polynomial of degree 6 after an exact n ln2 (ln2 split in two), within 2 ulp.
// The caller clamps x to its range and puts 2^n into the exponent bits.
#pragma once

namespace mask2former {

template <typename T>
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void expf_reduced(T x, T& n, T& exp_r) {
  n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const T r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  exp_r = p * r * r + r + 1.0f;
}

}  // namespace mask2former
