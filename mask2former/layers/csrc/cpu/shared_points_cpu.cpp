// mask2former::sample_shared_points on the CPU: N float32 maps [N, H, W] read bilinearly at the same P points
// [P, 2] (normalised (x, y) in [0, 1]) -> [N, P], with grid_sample's rule (align_corners=False, zero padding).
// Forward only: the Hungarian matcher reads all of an image's mask logits at one draw of points, under no_grad.
//
// grid_sample computes each point's corners and weights again for every map and, with the maps as channels,
// reads all N maps at each point. Here the corners and weights are computed once, and the threads take whole
// maps, each read from start to end while it sits in the core's cache.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__linux__)
#define SHARED_POINTS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SHARED_POINTS_CPU_CLONES
#endif

namespace mask2former {

namespace {

// The four corners of P points as flat offsets into an [H, W] map, and their bilinear weights (0 for a corner
// outside the map, whose offset is then 0). Corner k of point p is at [k * P + p].
struct Corners {
  std::vector<int32_t> offset;
  std::vector<float> weight;
};

Corners make_corners(const float* points, int64_t P, int64_t H, int64_t W) {
  Corners c{std::vector<int32_t>(4 * P), std::vector<float>(4 * P)};
  const float half_w = 0.5f * static_cast<float>(W), half_h = 0.5f * static_cast<float>(H);
  for (int64_t p = 0; p < P; ++p) {
    // grid_sample's unnormalisation of g = 2 * point - 1: (g + 1) * size / 2 - 0.5.
    const float x = (2.0f * points[2 * p] - 1.0f + 1.0f) * half_w - 0.5f;
    const float y = (2.0f * points[2 * p + 1] - 1.0f + 1.0f) * half_h - 0.5f;
    const float x0 = std::floor(x), y0 = std::floor(y);
    const float fx = x - x0, fy = y - y0;
    const int64_t xs[2] = {static_cast<int64_t>(x0), static_cast<int64_t>(x0) + 1};
    const int64_t ys[2] = {static_cast<int64_t>(y0), static_cast<int64_t>(y0) + 1};
    const float wx[2] = {1.0f - fx, fx}, wy[2] = {1.0f - fy, fy};
    for (int k = 0; k < 4; ++k) {
      const int64_t xi = xs[k & 1], yi = ys[k >> 1];
      const bool inside = xi >= 0 && xi < W && yi >= 0 && yi < H;
      c.offset[k * P + p] = inside ? static_cast<int32_t>(yi * W + xi) : 0;
      c.weight[k * P + p] = inside ? wy[k >> 1] * wx[k & 1] : 0.0f;
    }
  }
  return c;
}

// out[p] = sum over the 4 corners of weight * map[offset], for one map.
SHARED_POINTS_CPU_CLONES void sample_map(const float* __restrict__ map, const int32_t* __restrict__ offset,
                                         const float* __restrict__ weight, int64_t P, float* __restrict__ out) {
  for (int64_t p = 0; p < P; ++p) {
    out[p] = weight[p] * map[offset[p]] + weight[P + p] * map[offset[P + p]] +
             weight[2 * P + p] * map[offset[2 * P + p]] + weight[3 * P + p] * map[offset[3 * P + p]];
  }
}

at::Tensor sample_shared_points_cpu(const at::Tensor& maps, const at::Tensor& points) {
  TORCH_CHECK(maps.dim() == 3 && maps.scalar_type() == at::kFloat,
              "sample_shared_points: maps must be float32 [N, H, W], got ", maps.scalar_type(), " ", maps.sizes());
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 2 && points.scalar_type() == at::kFloat,
              "sample_shared_points: points must be float32 [P, 2], got ", points.scalar_type(), " ",
              points.sizes());
  const int64_t N = maps.size(0), H = maps.size(1), W = maps.size(2), P = points.size(0);
  TORCH_CHECK(H * W <= INT32_MAX, "sample_shared_points: maps of ", H, "x", W, " pixels are too large");
  const at::Tensor m = maps.contiguous();
  const at::Tensor pts = points.contiguous();
  const Corners corners = make_corners(pts.const_data_ptr<float>(), P, H, W);
  at::Tensor out = at::empty({N, P}, maps.options());
  const float* src = m.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      sample_map(src + n * H * W, corners.offset.data(), corners.weight.data(), P, dst + n * P);
    }
  });
  return out;
}

}  // namespace

}  // namespace mask2former

TORCH_LIBRARY_FRAGMENT(mask2former, m) {
  m.def("sample_shared_points(Tensor maps, Tensor points) -> Tensor");
}

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("sample_shared_points", &mask2former::sample_shared_points_cpu);
}
