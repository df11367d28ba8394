// Python binding of the RMSNorm CUDA kernels: chatbaker_kernels._cuda_rmsnorm.
// Validates inputs here so that the kernels can assume contiguous CUDA tensors
// of matching shapes; the autograd wiring lives in chatbaker_kernels/cuda_rmsnorm.py.
#include <torch/extension.h>

#include "rmsnorm.h"

namespace {

void check_rows(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.device() == x.device(), name, " must be on ", x.device(), ", got ", t.device());
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must be ", x.scalar_type(), ", got ", t.scalar_type());
}

void check_common(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D [rows, hidden], got ", x.sizes());
  check_rows(x, x, "x");
  TORCH_CHECK(
      weight.dim() == 1 && weight.size(0) == x.size(1),
      "weight must have shape [", x.size(1), "], got ", weight.sizes());
  TORCH_CHECK(weight.is_cuda() && weight.is_contiguous(), "weight must be a contiguous CUDA tensor");
  TORCH_CHECK(weight.device() == x.device(), "weight must be on ", x.device());
}

std::vector<at::Tensor> forward(
    const at::Tensor& x,
    const std::optional<at::Tensor>& residual,
    const at::Tensor& weight,
    double eps) {
  check_common(x, weight);
  if (residual.has_value()) {
    check_rows(*residual, x, "residual");
  }
  return chatbaker::rms_norm_forward_cuda(x, residual, weight, eps);
}

std::vector<at::Tensor> backward(
    const at::Tensor& dy,
    const at::Tensor& normed_input,
    const at::Tensor& weight,
    const at::Tensor& rstd,
    const std::optional<at::Tensor>& dsum) {
  check_common(normed_input, weight);
  check_rows(dy, normed_input, "dy");
  if (dsum.has_value()) {
    check_rows(*dsum, normed_input, "dsum");
  }
  TORCH_CHECK(
      rstd.is_cuda() && rstd.is_contiguous() && rstd.dim() == 1 &&
          rstd.size(0) == normed_input.size(0) && rstd.scalar_type() == at::kFloat,
      "rstd must be a contiguous CUDA float32 tensor of shape [", normed_input.size(0), "]");
  return chatbaker::rms_norm_backward_cuda(dy, normed_input, weight, rstd, dsum);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "RMSNorm forward/backward CUDA kernels, optionally fused with the residual add";
  m.def(
      "forward",
      &forward,
      "Returns [y, h, rstd]: y = rms_norm(h) * weight with h = x + residual (None without one)",
      py::arg("x"),
      py::arg("residual"),
      py::arg("weight"),
      py::arg("eps"));
  m.def(
      "backward",
      &backward,
      "Returns [dx, dweight]; dsum (the gradient of h) is added to dx when given",
      py::arg("dy"),
      py::arg("normed_input"),
      py::arg("weight"),
      py::arg("rstd"),
      py::arg("dsum"));
}
