#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run on a machine that has one (hwnas installed, torch with CUDA):
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]        # default benchmarks/results
#
# 1. builds the native library with its CUDA kernels (nvcc where CMake finds it);
# 2. the kernel, profiler and device tests on the GPU (Triton, native CUDA and reference kernels against the
#    unfused supernet; the gpu profiler);
# 3. benchmarks/kernel_bandwidth.py: the accumulate kernel's bandwidth against a device-to-device copy;
# 4. benchmarks/search_memory.py --device cuda over every kernel backend (the kernels issue's GPU goals);
# 5. hwnas profile --device gpu for the mobile space at 224 (the GPU latency table).
# Each result lands in OUT_DIR; a failing step stops the run (the tests first, so no benchmark times broken code).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_checks: needs a CUDA GPU; torch sees none here')"
gpu="$(python -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())")"  # e.g. h200

cmake -S . -B build/native -DPython3_EXECUTABLE="$(command -v python)"
cmake --build build/native -j
python -m pytest -q tests/kernels tests/profilers tests/test_device.py
python benchmarks/kernel_bandwidth.py --json "$out/kernel_bandwidth.json"
python benchmarks/search_memory.py --device cuda --repeats 10 --backends auto triton native reference \
  --json "$out/search_memory_cuda.json"
hwnas profile --device gpu --space mobile --input-size 224 --calibrate 60 --out "$out/gpu_${gpu}_mobile_224.json"
