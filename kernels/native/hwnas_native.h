// Declarations shared by the CPU (hwnas_cpu.cpp) and CUDA (hwnas_cuda.cu) kernels of torch.ops.hwnas.*.
#pragma once
#include <ATen/core/Tensor.h>

namespace hwnas_native {

// The input checks of weighted_accumulate_ and dot, for both devices: same shapes, dtypes and device,
// dense in one memory layout; a failed check raises RuntimeError naming the op and the problem.
void check_pair(const at::Tensor& a, const at::Tensor& b, const char* op);

}  // namespace hwnas_native
