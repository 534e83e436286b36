// CUDA kernels for the torch.ops.hwnas.* schemas defined in hwnas_cpu.cpp (same semantics, same checks).
// hwnas prefers its Triton kernels on CUDA tensors; these run when Triton is not installed.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "hwnas_native.h"

namespace {

using hwnas_native::check_pair;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

int64_t blocks_for(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

template <typename scalar_t>
__global__ void axpy_kernel(scalar_t* out, const scalar_t* y, double w, bool overwrite, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t wt = static_cast<acc_t>(w);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const acc_t base = overwrite ? acc_t(0) : static_cast<acc_t>(out[i]);
    out[i] = static_cast<scalar_t>(base + wt * static_cast<acc_t>(y[i]));
  }
}

// One partial sum per block (grid-stride, then a shared-memory tree); the partials are summed by at::sum.
template <typename scalar_t, typename acc_t>
__global__ void dot_kernel(const scalar_t* a, const scalar_t* b, acc_t* partial, int64_t n) {
  __shared__ acc_t shared[kThreads];
  acc_t acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    acc += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

struct Strides4 {
  int64_t b, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// whole[:, j*k + i] <-> (i == 0 ? mixed[:, j] : bypass[:, (i-1)*m + j]); grid.y walks the (b, channel) planes.
template <typename T, bool kToWhole>
__global__ void shuffle_kernel(T* whole, T* mixed, T* bypass, int64_t channels, int64_t m, int64_t k, int64_t h,
                               int64_t w, Strides4 ws, Strides4 ms, Strides4 bs) {
  const int64_t plane = blockIdx.y, b = plane / channels, o = plane % channels, j = o / k, i = o % k;
  T* part = i == 0 ? mixed + b * ms.b + j * ms.c : bypass + b * bs.b + ((i - 1) * m + j) * bs.c;
  const Strides4& ps = i == 0 ? ms : bs;
  T* wplane = whole + b * ws.b + o * ws.c;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < h * w; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / w, c = e % w;
    if (kToWhole)
      wplane[r * ws.h + c * ws.w] = part[r * ps.h + c * ps.w];
    else
      part[r * ps.h + c * ps.w] = wplane[r * ws.h + c * ws.w];
  }
}

template <bool kToWhole>
void shuffle_planes(const at::Tensor& whole, const at::Tensor& mixed, const at::Tensor& bypass, int64_t k) {
  const int64_t planes = whole.size(0) * whole.size(1), hw = whole.size(2) * whole.size(3);
  TORCH_CHECK(planes < 65536, "partial_channel_shuffle (CUDA): at most 65535 (batch x channel) planes");
  if (planes == 0 || hw == 0) return;
  const dim3 grid(std::min<int64_t>((hw + kThreads - 1) / kThreads, 64), planes);
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    shuffle_kernel<T, kToWhole><<<grid, kThreads, 0, stream>>>(
        static_cast<T*>(whole.data_ptr()), static_cast<T*>(mixed.data_ptr()), static_cast<T*>(bypass.data_ptr()),
        whole.size(1), mixed.size(1), k, whole.size(2), whole.size(3), strides_of(whole), strides_of(mixed),
        strides_of(bypass));
  };
  switch (whole.element_size()) {
    case 1: launch(uint8_t{}); break;
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: TORCH_CHECK(false, "partial_channel_shuffle: unsupported element size");
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor& weighted_accumulate_(at::Tensor& out, const at::Tensor& y, double w, bool overwrite) {
  check_pair(out, y, "weighted_accumulate_");
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t n = y.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "weighted_accumulate_", [&] {
    axpy_kernel<scalar_t><<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        out.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), w, overwrite, n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor dot(const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, "dot");
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.numel(), blocks = blocks_for(n);
  const auto acc_type = a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = at::empty({blocks}, a.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "dot", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dot_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return at::sum(partial).to(a.scalar_type());
}

at::Tensor partial_channel_shuffle(const at::Tensor& mixed, const at::Tensor& bypass, int64_t k) {
  const c10::cuda::CUDAGuard guard(mixed.device());
  at::Tensor out = at::empty({mixed.size(0), k * mixed.size(1), mixed.size(2), mixed.size(3)},
                             mixed.options().memory_format(mixed.suggest_memory_format()));
  shuffle_planes<true>(out, mixed, bypass, k);
  return out;
}

std::tuple<at::Tensor, at::Tensor> partial_channel_unshuffle(const at::Tensor& grad, int64_t k) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t batch = grad.size(0), m = grad.size(1) / k, h = grad.size(2), w = grad.size(3);
  const auto options = grad.options().memory_format(grad.suggest_memory_format());
  at::Tensor mixed = at::empty({batch, m, h, w}, options);
  at::Tensor bypass = at::empty({batch, (k - 1) * m, h, w}, options);
  shuffle_planes<false>(grad, mixed, bypass, k);
  return {mixed, bypass};
}

}  // namespace

TORCH_LIBRARY_IMPL(hwnas, CUDA, m) {
  m.impl("weighted_accumulate_", &weighted_accumulate_);
  m.impl("dot", &dot);
  m.impl("partial_channel_shuffle", &partial_channel_shuffle);
  m.impl("partial_channel_unshuffle", &partial_channel_unshuffle);
}
