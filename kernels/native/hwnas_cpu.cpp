// CPU kernels of hwnas.kernels, registered as torch.ops.hwnas.*:
//   weighted_accumulate_  out = w * y (+ out)          one pass of the fused mixed op's forward (DARTS Eq. 2)
//   dot                   <a, b>                       the weight gradient <g, o_k(x)> of its backward
//   partial_channel_shuffle / _unshuffle               PC-DARTS Eq. (2): cat + channel shuffle in one copy,
//                                                      in the input's layout (NCHW or NHWC)
// OpenMP-parallel when the compiler has it; the schemas are defined here, the CUDA file adds CUDA kernels.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>

#include "hwnas_native.h"

// "[2, 3]": formatted without iostream's locale-dependent number output, which crashed inside this library on
// one toolchain (the check's own message then killed the process instead of raising a RuntimeError).
static std::string shape_text(const at::Tensor& t) {
  std::string text = "[";
  for (int64_t d = 0; d < t.dim(); ++d) text += (d ? ", " : "") + std::to_string(t.size(d));
  return text + "]";
}

void hwnas_native::check_pair(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": shapes differ, ", shape_text(a), " vs ", shape_text(b));
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": dtypes differ");
  // element i of one is element i of the other: dense, one layout (NCHW, or NHWC as CPU searches run)
  TORCH_CHECK(a.strides() == b.strides() && a.is_non_overlapping_and_dense(), op,
              ": needs dense tensors of one memory layout");
  TORCH_CHECK(a.device() == b.device(), op, ": tensors on different devices");
}

namespace {

using hwnas_native::check_pair;

constexpr int64_t kParallelGrain = 1 << 15;  // elements below which threads cost more than they save

template <typename scalar_t>
void axpy(scalar_t* out, const scalar_t* y, double w, bool overwrite, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t wt = static_cast<acc_t>(w);
  if (overwrite) {
#pragma omp parallel for simd if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(wt * static_cast<acc_t>(y[i]));
  } else {
#pragma omp parallel for simd if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i)
      out[i] = static_cast<scalar_t>(static_cast<acc_t>(out[i]) + wt * static_cast<acc_t>(y[i]));
  }
}

template <typename scalar_t>
double dot_kernel(const scalar_t* a, const scalar_t* b, int64_t n) {
  double acc = 0.0;
#pragma omp parallel for simd reduction(+ : acc) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return acc;
}

at::Tensor& weighted_accumulate_(at::Tensor& out, const at::Tensor& y, double w, bool overwrite) {
  check_pair(out, y, "weighted_accumulate_");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "weighted_accumulate_", [&] {
    axpy(out.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), w, overwrite, y.numel());
  });
  return out;
}

at::Tensor dot(const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, "dot");
  at::Tensor result = at::empty({}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "dot", [&] {
    *result.data_ptr<scalar_t>() =
        static_cast<scalar_t>(dot_kernel(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), a.numel()));
  });
  return result;
}

// Copy one (H, W) plane between strided layouts, by element size (the shuffle moves bytes, any dtype).
template <typename T>
void copy_plane(char* dst, const char* src, int64_t h, int64_t w, int64_t dh, int64_t dw, int64_t sh, int64_t sw) {
  T* d = reinterpret_cast<T*>(dst);
  const T* s = reinterpret_cast<const T*>(src);
  if (dw == 1 && sw == 1) {
    for (int64_t r = 0; r < h; ++r) std::memcpy(d + r * dh, s + r * sh, w * sizeof(T));
    return;
  }
  for (int64_t r = 0; r < h; ++r)
    for (int64_t c = 0; c < w; ++c) d[r * dh + c * dw] = s[r * sh + c * sw];
}

// NHWC: a pixel's channels are adjacent in all three tensors, so the shuffle runs pixel by pixel.
template <typename T>
void shuffle_pixels(const at::Tensor& whole, const at::Tensor& mixed, const at::Tensor& bypass, int64_t k,
                    bool to_whole) {
  const int64_t batch = whole.size(0), h = whole.size(2), w = whole.size(3), m = mixed.size(1);
  T* wp = static_cast<T*>(whole.data_ptr());
  T* mp = static_cast<T*>(mixed.data_ptr());
  T* bp = static_cast<T*>(bypass.data_ptr());
  const auto ws = whole.strides(), ms = mixed.strides(), bs = bypass.strides();
#pragma omp parallel for if (whole.numel() > kParallelGrain)
  for (int64_t row = 0; row < batch * h; ++row) {
    const int64_t b = row / h, y = row % h;
    for (int64_t x = 0; x < w; ++x) {
      T* pixel = wp + b * ws[0] + y * ws[2] + x * ws[3];
      T* mix = mp + b * ms[0] + y * ms[2] + x * ms[3];
      T* rest = bp + b * bs[0] + y * bs[2] + x * bs[3];
      for (int64_t j = 0; j < m; ++j) {
        T* group = pixel + j * k;  // output channels j*k .. j*k + k-1
        if (to_whole) {
          group[0] = mix[j];
          for (int64_t i = 1; i < k; ++i) group[i] = rest[(i - 1) * m + j];
        } else {
          mix[j] = group[0];
          for (int64_t i = 1; i < k; ++i) rest[(i - 1) * m + j] = group[i];
        }
      }
    }
  }
}

// whole[:, j*k + i] <-> (i == 0 ? mixed[:, j] : bypass[:, (i-1)*m + j]); `to_whole` picks the direction.
void shuffle_planes(const at::Tensor& whole, const at::Tensor& mixed, const at::Tensor& bypass, int64_t k,
                    bool to_whole) {
  const int64_t batch = whole.size(0), channels = whole.size(1), h = whole.size(2), w = whole.size(3);
  const int64_t m = mixed.size(1), es = whole.element_size();
  TORCH_CHECK(es == 1 || es == 2 || es == 4 || es == 8, "partial_channel_shuffle: unsupported element size");
  if (whole.stride(1) == 1 && mixed.stride(1) == 1 && bypass.stride(1) == 1) {
    switch (es) {
      case 1: return shuffle_pixels<uint8_t>(whole, mixed, bypass, k, to_whole);
      case 2: return shuffle_pixels<uint16_t>(whole, mixed, bypass, k, to_whole);
      case 4: return shuffle_pixels<uint32_t>(whole, mixed, bypass, k, to_whole);
      default: return shuffle_pixels<uint64_t>(whole, mixed, bypass, k, to_whole);
    }
  }
  char* wp = static_cast<char*>(whole.data_ptr());
  char* mp = static_cast<char*>(mixed.data_ptr());
  char* bp = static_cast<char*>(bypass.data_ptr());
  const auto ws = whole.strides(), ms = mixed.strides(), bs = bypass.strides();
  const int64_t planes = batch * channels;
#pragma omp parallel for if (planes * h * w > kParallelGrain)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t b = p / channels, o = p % channels, j = o / k, i = o % k;
    char* wplane = wp + (b * ws[0] + o * ws[1]) * es;
    char* part = i == 0 ? mp + (b * ms[0] + j * ms[1]) * es : bp + (b * bs[0] + ((i - 1) * m + j) * bs[1]) * es;
    const auto& ps = i == 0 ? ms : bs;
    char* dst = to_whole ? wplane : part;
    const char* src = to_whole ? part : wplane;
    const int64_t dh = to_whole ? ws[2] : ps[2], dw = to_whole ? ws[3] : ps[3];
    const int64_t sh = to_whole ? ps[2] : ws[2], sw = to_whole ? ps[3] : ws[3];
    switch (es) {
      case 1: copy_plane<uint8_t>(dst, src, h, w, dh, dw, sh, sw); break;
      case 2: copy_plane<uint16_t>(dst, src, h, w, dh, dw, sh, sw); break;
      case 4: copy_plane<uint32_t>(dst, src, h, w, dh, dw, sh, sw); break;
      default: copy_plane<uint64_t>(dst, src, h, w, dh, dw, sh, sw);
    }
  }
}

at::Tensor partial_channel_shuffle(const at::Tensor& mixed, const at::Tensor& bypass, int64_t k) {
  const int64_t m = mixed.size(1);
  at::Tensor out = at::empty({mixed.size(0), k * m, mixed.size(2), mixed.size(3)},
                             mixed.options().memory_format(mixed.suggest_memory_format()));
  shuffle_planes(out, mixed, bypass, k, /*to_whole=*/true);
  return out;
}

std::tuple<at::Tensor, at::Tensor> partial_channel_unshuffle(const at::Tensor& grad, int64_t k) {
  const int64_t batch = grad.size(0), m = grad.size(1) / k, h = grad.size(2), w = grad.size(3);
  const auto options = grad.options().memory_format(grad.suggest_memory_format());
  at::Tensor mixed = at::empty({batch, m, h, w}, options);
  at::Tensor bypass = at::empty({batch, (k - 1) * m, h, w}, options);
  shuffle_planes(grad, mixed, bypass, k, /*to_whole=*/false);
  return {mixed, bypass};
}

}  // namespace

TORCH_LIBRARY(hwnas, m) {
  m.def("weighted_accumulate_(Tensor(a!) out, Tensor y, float w, bool overwrite) -> Tensor(a!)");
  m.def("dot(Tensor a, Tensor b) -> Tensor");
  m.def("partial_channel_shuffle(Tensor mixed, Tensor bypass, int k) -> Tensor");
  m.def("partial_channel_unshuffle(Tensor grad, int k) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hwnas, CPU, m) {
  m.impl("weighted_accumulate_", &weighted_accumulate_);
  m.impl("dot", &dot);
  m.impl("partial_channel_shuffle", &partial_channel_shuffle);
  m.impl("partial_channel_unshuffle", &partial_channel_unshuffle);
}
