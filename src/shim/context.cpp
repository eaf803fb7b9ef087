// libtorch's process-wide float32 precision switches, which tch does not expose: TF32 for CUDA
// matrix products (cuBLAS) and convolutions (cuDNN). The flags live in ATen's global context in
// libtorch_cpu, so they can be set and read back without a GPU. C++ exceptions must not cross
// into Rust: every entry point catches them and reports failure with -1.
#include <ATen/Context.h>

namespace {
int set_precision(at::Float32Op op, bool tf32) {
  try {
    at::globalContext().setFloat32Precision(
        at::Float32Backend::CUDA, op,
        tf32 ? at::Float32Precision::TF32 : at::Float32Precision::IEEE);
    return 0;
  } catch (...) {
    return -1;
  }
}

int get_precision(at::Float32Op op) {
  try {
    return at::globalContext().float32Precision(at::Float32Backend::CUDA, op) ==
                   at::Float32Precision::TF32
               ? 1
               : 0;
  } catch (...) {
    return -1;
  }
}
}  // namespace

extern "C" {
int llamagen_set_cuda_tf32(int on) {
  int matmul = set_precision(at::Float32Op::MATMUL, on != 0);
  int conv = set_precision(at::Float32Op::CONV, on != 0);
  return matmul == 0 && conv == 0 ? 0 : -1;
}

int llamagen_cuda_tf32_matmul() { return get_precision(at::Float32Op::MATMUL); }

int llamagen_cuda_tf32_conv() { return get_precision(at::Float32Op::CONV); }
}
