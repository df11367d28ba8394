// RMSNorm CUDA kernels (rmsnorm.cu), called from the Python binding (rmsnorm_binding.cpp).
//
// Shapes: x, residual, dy, dsum are contiguous [rows, cols] of float32, float16
// or bfloat16; weight is [cols] in x's dtype or float32. Statistics and math
// are in float; outputs are in x's dtype, dweight in weight's dtype.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace chatbaker {

// Returns {y, h, rstd}: y = norm(h) * weight where h = x + residual (rounded to
// x's dtype) or h = x; h is an undefined tensor when there is no residual;
// rstd = 1 / sqrt(mean(h^2) + eps) per row, float32.
std::vector<at::Tensor> rms_norm_forward_cuda(
    const at::Tensor& x,
    const std::optional<at::Tensor>& residual,
    const at::Tensor& weight,
    double eps);

// Returns {dx, dweight}. `normed_input` is the tensor that was normalised (h,
// or x without a residual); dsum, the gradient of the returned h, is added to
// dx when given.
std::vector<at::Tensor> rms_norm_backward_cuda(
    const at::Tensor& dy,
    const at::Tensor& normed_input,
    const at::Tensor& weight,
    const at::Tensor& rstd,
    const std::optional<at::Tensor>& dsum);

}  // namespace chatbaker
