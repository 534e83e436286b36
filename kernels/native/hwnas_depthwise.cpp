// Backward of a depthwise 2-D convolution on the CPU, registered as torch.ops.hwnas.depthwise_conv2d_backward:
//   grad_input[n, y, x, c]  = Σ_{i,j} w[c, i, j] · g[n, (y + p_h − i·d_h) / s_h, (x + p_w − j·d_w) / s_w, c]
//   grad_weight[c, i, j]    = Σ_{n,ho,wo} g[n, ho, wo, c] · x[n, ho·s_h + i·d_h − p_h, wo·s_w + j·d_w − p_w, c]
// (terms whose input position falls in the zero padding, or whose division is inexact, left out).
//
// oneDNN's depthwise backward is slow on this project's CPUs for dilated and 5×5 kernels (dil_conv_5x5 on
// (16, 16, 32, 32): 16–30 ms against 0.6 ms forward), which made it 44% of a DARTS supernet step. Both sums
// are computed here in channels-last order: at stride 1 along the width a row of (W, C) is one contiguous run,
// so each tap is one vectorised multiply-add over the whole row, for any channel count (PC-DARTS hands the ops
// 4). NCHW tensors are copied to channels-last and back. The sum order is fixed (batch chunks independent of the
// thread count), so results are the same from run to run and from one thread count to another.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBatchChunks = 16;      // grad_weight's partial sums: fixed, so the order never varies
constexpr int64_t kParallelGrain = 1 << 14;  // output elements below which threads cost more than they save
constexpr int64_t kBlock = 64;               // elements summed in registers at a time (4 AVX-512 vectors)

struct Geometry {
  int64_t batch, channels, in_h, in_w, out_h, out_w, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t taps() const { return k_h * k_w; }
  int64_t in_row() const { return in_w * channels; }   // one input row of (W, C), contiguous in channels-last
  int64_t out_row() const { return out_w * channels; }
};

// [lo, hi): the output positions o whose tap, at offset `off` = tap·dilation − padding, reads input position
// o·stride + off inside [0, n_in).
void tap_range(int64_t off, int64_t stride, int64_t n_in, int64_t n_out, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = std::min(n_out, n_in - off <= 0 ? int64_t{0} : (n_in - off + stride - 1) / stride);
  hi = std::max(hi, lo);
}

// One batch chunk's Σ over images, rows and columns, per tap and channel, into partial (taps, C).
template <typename scalar_t, typename acc_t>
void weight_gradient_chunk(const scalar_t* g, const scalar_t* x, int64_t n_begin, int64_t n_end, const Geometry& q,
                           std::vector<acc_t>& acc, acc_t* partial) {
  const int64_t C = q.channels, row = q.out_row();
  std::fill(acc.begin(), acc.end(), acc_t{0});  // (taps, W_out·C): per tap, a running sum for every (wo, c)
  for (int64_t n = n_begin; n < n_end; ++n) {
    const scalar_t* gn = g + n * q.out_h * row;
    const scalar_t* xn = x + n * q.in_h * q.in_row();
    for (int64_t i = 0; i < q.k_h; ++i) {
      int64_t ho_lo, ho_hi;
      tap_range(i * q.dil_h - q.pad_h, q.stride_h, q.in_h, q.out_h, ho_lo, ho_hi);
      for (int64_t j = 0; j < q.k_w; ++j) {
        const int64_t off_w = j * q.dil_w - q.pad_w;
        int64_t wo_lo, wo_hi;
        tap_range(off_w, q.stride_w, q.in_w, q.out_w, wo_lo, wo_hi);
        acc_t* a = acc.data() + (i * q.k_w + j) * row;
        // x_tap + ho·x_step: where x's row for output row ho starts, shifted by the tap, so that element e
        // of it pairs with element e of g's row (at stride 1 along the width)
        const int64_t x_tap = (i * q.dil_h - q.pad_h) * q.in_row() + off_w * C, x_step = q.stride_h * q.in_row();
        if (q.stride_w == 1) {  // (wo, c) and (wo + off_w, c) are both contiguous runs: sum down the rows in
          // registers, a block of kBlock elements at a time, and add each block to `a` once
          for (int64_t e0 = wo_lo * C; e0 < wo_hi * C; e0 += kBlock) {
            const int64_t len = std::min(kBlock, wo_hi * C - e0);
            acc_t block[kBlock] = {};
            for (int64_t ho = ho_lo; ho < ho_hi; ++ho) {
              const scalar_t* gr = gn + ho * row + e0;
              const scalar_t* xr = xn + (x_tap + ho * x_step + e0);
              if (len == kBlock) {
#pragma omp simd
                for (int64_t t = 0; t < kBlock; ++t)
                  block[t] += static_cast<acc_t>(gr[t]) * static_cast<acc_t>(xr[t]);
              } else {
                for (int64_t t = 0; t < len; ++t) block[t] += static_cast<acc_t>(gr[t]) * static_cast<acc_t>(xr[t]);
              }
            }
            for (int64_t t = 0; t < len; ++t) a[e0 + t] += block[t];
          }
          continue;
        }
        for (int64_t ho = ho_lo; ho < ho_hi; ++ho)
          for (int64_t wo = wo_lo; wo < wo_hi; ++wo) {  // a pixel's C channels at a time
            const scalar_t* gp = gn + ho * row + wo * C;
            const scalar_t* xp = xn + (x_tap + ho * x_step + wo * q.stride_w * C);
            acc_t* ap = a + wo * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) ap[c] += static_cast<acc_t>(gp[c]) * static_cast<acc_t>(xp[c]);
          }
      }
    }
  }
  for (int64_t t = 0; t < q.taps(); ++t) {
    acc_t* p = partial + t * C;
    const acc_t* a = acc.data() + t * row;
    for (int64_t wo = 0; wo < q.out_w; ++wo)
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) p[c] += a[wo * C + c];
  }
}

template <typename scalar_t>
void weight_gradient(const scalar_t* g, const scalar_t* x, scalar_t* gw, const Geometry& q) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = q.channels, taps = q.taps();
  const int64_t chunks = std::min(q.batch, kBatchChunks);
  std::vector<acc_t> partial(chunks * taps * C, acc_t{0});  // (chunks, taps, C)
#pragma omp parallel if (chunks > 1 && q.batch * q.out_h * q.out_row() > kParallelGrain)
  {
    std::vector<acc_t> acc(taps * q.out_row());
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      weight_gradient_chunk(g, x, chunk * q.batch / chunks, (chunk + 1) * q.batch / chunks, q, acc,
                            partial.data() + chunk * taps * C);
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < taps; ++t) {
      acc_t sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[(chunk * taps + t) * C + c];
      gw[c * taps + t] = static_cast<scalar_t>(sum);  // weight (C, 1, k_h, k_w)
    }
}

// Each image's input gradient, scattered tap by tap: into gx itself when scalar_t is the accumulation type,
// else into an acc_t image then cast into gx.
template <typename scalar_t>
void input_gradient(const scalar_t* g, const scalar_t* w, scalar_t* gx, const Geometry& q) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool in_place = std::is_same_v<acc_t, scalar_t>;
  const int64_t C = q.channels, taps = q.taps(), row = q.out_row(), image = q.in_h * q.in_row();
  // weights tap-major, (taps, C), and at stride 1 along the width repeated along a whole row, (taps, W_out·C)
  std::vector<acc_t> w_tap(taps * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < taps; ++t) w_tap[t * C + c] = static_cast<acc_t>(w[c * taps + t]);
  std::vector<acc_t> w_row(q.stride_w == 1 ? taps * row : 0);
  for (int64_t t = 0; t < taps && q.stride_w == 1; ++t)
    for (int64_t e = 0; e < row; ++e) w_row[t * row + e] = w_tap[t * C + e % C];
#pragma omp parallel if (q.batch > 1 && q.batch * image > kParallelGrain)
  {
    std::vector<acc_t> buffer(in_place ? 0 : image);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < q.batch; ++n) {
      acc_t* acc;
      if constexpr (in_place)
        acc = gx + n * image;
      else
        acc = buffer.data();
      std::fill(acc, acc + image, acc_t{0});
      const scalar_t* gn = g + n * q.out_h * row;
      for (int64_t i = 0; i < q.k_h; ++i) {
        int64_t ho_lo, ho_hi;
        tap_range(i * q.dil_h - q.pad_h, q.stride_h, q.in_h, q.out_h, ho_lo, ho_hi);
        for (int64_t j = 0; j < q.k_w; ++j) {
          const int64_t t = i * q.k_w + j, off_w = j * q.dil_w - q.pad_w;
          // acc + (a_tap + ho·a_step): the input row output row ho reads through this tap, shifted like x_tap
          const int64_t a_tap = (i * q.dil_h - q.pad_h) * q.in_row() + off_w * C, a_step = q.stride_h * q.in_row();
          int64_t wo_lo, wo_hi;
          tap_range(off_w, q.stride_w, q.in_w, q.out_w, wo_lo, wo_hi);
          for (int64_t ho = ho_lo; ho < ho_hi; ++ho) {
            const scalar_t* gr = gn + ho * row;
            if (q.stride_w == 1) {
              acc_t* ar = acc + (a_tap + ho * a_step);
              const acc_t* wr = w_row.data() + t * row;
#pragma omp simd
              for (int64_t e = wo_lo * C; e < wo_hi * C; ++e) ar[e] += wr[e] * static_cast<acc_t>(gr[e]);
              continue;
            }
            const acc_t* wt = w_tap.data() + t * C;
            for (int64_t wo = wo_lo; wo < wo_hi; ++wo) {
              acc_t* ap = acc + (a_tap + ho * a_step + wo * q.stride_w * C);
              const scalar_t* gp = gr + wo * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) ap[c] += wt[c] * static_cast<acc_t>(gp[c]);
            }
          }
        }
      }
      if constexpr (!in_place) {
        scalar_t* out = gx + n * image;
#pragma omp simd
        for (int64_t e = 0; e < image; ++e) out[e] = static_cast<scalar_t>(acc[e]);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv2d_backward(const at::Tensor& grad, const at::Tensor& input,
                                                             const at::Tensor& weight, at::IntArrayRef stride,
                                                             at::IntArrayRef padding, at::IntArrayRef dilation,
                                                             std::array<bool, 2> output_mask) {
  constexpr const char* op = "depthwise_conv2d_backward";
  TORCH_CHECK(input.dim() == 4 && grad.dim() == 4, op, ": needs (N, C, H, W) input and grad");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation need two values each");
  const int64_t C = input.size(1);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1, op,
              ": weight must be (C, 1, kH, kW) for an input of C channels");
  TORCH_CHECK(grad.size(0) == input.size(0) && grad.size(1) == C, op, ": grad and input disagree in N or C");
  TORCH_CHECK(grad.scalar_type() == input.scalar_type() && weight.scalar_type() == input.scalar_type(), op,
              ": dtypes differ");
  for (int d = 0; d < 2; ++d)
    TORCH_CHECK(stride[d] >= 1 && dilation[d] >= 1 && padding[d] >= 0, op, ": bad stride, padding or dilation");
  const Geometry q{input.size(0), C,          input.size(2), input.size(3), grad.size(2),
                   grad.size(3),  weight.size(2), weight.size(3), stride[0],    stride[1],
                   padding[0],    padding[1], dilation[0],   dilation[1]};
  for (int d = 0; d < 2; ++d) {
    const int64_t n_in = d ? q.in_w : q.in_h, k = d ? q.k_w : q.k_h;
    const int64_t expected = (n_in + 2 * padding[d] - dilation[d] * (k - 1) - 1) / stride[d] + 1;
    TORCH_CHECK((d ? q.out_w : q.out_h) == expected, op, ": grad's spatial size does not match the convolution");
  }
  const auto last = at::MemoryFormat::ChannelsLast;
  const at::Tensor g = grad.contiguous(last), w = weight.contiguous();
  const at::Tensor x = output_mask[1] ? input.contiguous(last) : input;  // read by the weight gradient only
  at::Tensor grad_input, grad_weight;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), op, [&] {
    if (output_mask[0]) {
      grad_input = at::empty(input.sizes(), input.options().memory_format(last));
      input_gradient(g.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(), q);
    }
    if (output_mask[1]) {
      grad_weight = at::empty(weight.sizes(), weight.options());
      weight_gradient(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), grad_weight.data_ptr<scalar_t>(), q);
    }
  });
  if (grad_input.defined() && input.suggest_memory_format() != last)
    grad_input = grad_input.contiguous();  // back to the input's NCHW
  return {grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hwnas, m) {
  m.def(
      "depthwise_conv2d_backward(Tensor grad, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, bool[2] output_mask) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hwnas, CPU, m) { m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward); }
