// RMSNorm forward and backward, optionally fused with the residual add.
//
// One thread block normalises one row at a time (grid-stride over rows).
// Threads stride over the row's columns, so loads are coalesced; row sums go
// through warp shuffles and one shared-memory slot per warp.
//
// Backward, per row (xhat = x * rstd):
//   dx = rstd * (weight * dy - xhat * mean(xhat * weight * dy))
//   dweight = sum over rows of dy * xhat
// A block keeps its dweight partial sums in registers (each thread owns the
// same columns in every row) and writes them once; the [blocks, cols] partials
// are summed afterwards, so the result is deterministic (no atomics). Rows too
// wide for the register path use a strided path whose partial row lives in
// global memory, still owned by a single thread per column.
#include "rmsnorm.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

namespace chatbaker {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 1024;
// Columns per thread on the register path (rows up to 1024 * 8 = 8192 columns):
// three arrays of 8 floats stay within the 64 registers a thread of a
// 1024-thread block gets.
constexpr int kMaxColsPerThread = 8;

// Sum of `value` over the block, returned to every thread. `scratch` holds one
// value per warp; the leading __syncthreads lets a caller reuse it in a loop.
__device__ float block_sum(float value, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffff, value, offset);
  }
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = value;
  }
  __syncthreads();
  const int num_warps = blockDim.x / kWarpSize;
  value = lane < num_warps ? scratch[lane] : 0.f;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffff, value, offset);
  }
  return value;
}

template <typename T, typename W>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_forward_kernel(
    const T* __restrict__ x,
    const T* __restrict__ residual,  // nullptr: no residual
    const W* __restrict__ weight,
    T* __restrict__ y,
    T* __restrict__ h,  // x + residual, written when residual != nullptr
    float* __restrict__ rstd,
    int64_t rows,
    int cols,
    double eps) {
  __shared__ float scratch[kWarpSize];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * cols;
    float sum_sq = 0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      float v = static_cast<float>(x[base + j]);
      if (residual != nullptr) {
        // Round the sum to T first: the norm then sees exactly the h it returns.
        const T rounded = static_cast<T>(v + static_cast<float>(residual[base + j]));
        h[base + j] = rounded;
        v = static_cast<float>(rounded);
      }
      sum_sq += v * v;
    }
    const float r = 1.f / sqrt(block_sum(sum_sq, scratch) / cols + static_cast<float>(eps));
    if (threadIdx.x == 0) {
      rstd[row] = r;
    }
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      // The same thread wrote h[base + j] above, so it reads its own write.
      const T* source = residual != nullptr ? h : x;
      const float v = static_cast<float>(source[base + j]);
      y[base + j] = static_cast<T>(v * r * static_cast<float>(weight[j]));
    }
  }
}

// Register path: each thread caches its kCols columns of x and dy for the row
// (one read of each) and accumulates dweight for those columns in registers.
// The weight is re-read per row instead (an L1 hit): with 1024 threads a
// thread has 64 registers, and a cached weight would spill.
template <typename T, typename W, int kCols>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_backward_kernel(
    const T* __restrict__ dy,
    const T* __restrict__ x,
    const W* __restrict__ weight,
    const float* __restrict__ rstd,
    const T* __restrict__ dsum,  // nullptr: no residual gradient to add
    T* __restrict__ dx,
    float* __restrict__ dweight_partial,  // [gridDim.x, cols]
    int64_t rows,
    int cols) {
  __shared__ float scratch[kWarpSize];
  float dw[kCols];
#pragma unroll
  for (int i = 0; i < kCols; ++i) {
    dw[i] = 0.f;
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * cols;
    const float r = rstd[row];
    float xhat[kCols];
    float g[kCols];
    float dot = 0;
#pragma unroll
    for (int i = 0; i < kCols; ++i) {
      const int j = threadIdx.x + i * blockDim.x;
      xhat[i] = j < cols ? static_cast<float>(x[base + j]) * r : 0.f;
      g[i] = j < cols ? static_cast<float>(dy[base + j]) : 0.f;
      dot += j < cols ? xhat[i] * static_cast<float>(weight[j]) * g[i] : 0.f;
    }
    const float mean_dot = block_sum(dot, scratch) / cols;
#pragma unroll
    for (int i = 0; i < kCols; ++i) {
      const int j = threadIdx.x + i * blockDim.x;
      if (j < cols) {
        float d = (static_cast<float>(weight[j]) * g[i] - xhat[i] * mean_dot) * r;
        if (dsum != nullptr) {
          d += static_cast<float>(dsum[base + j]);
        }
        dx[base + j] = static_cast<T>(d);
        dw[i] += g[i] * xhat[i];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kCols; ++i) {
    const int j = threadIdx.x + i * blockDim.x;
    if (j < cols) {
      dweight_partial[static_cast<int64_t>(blockIdx.x) * cols + j] = dw[i];
    }
  }
}

// Strided path for rows wider than the register path covers: reads x and dy
// twice per row (the second read mostly hits cache) and accumulates dweight in
// this block's zero-initialised partial row, each column owned by one thread.
template <typename T, typename W>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_backward_wide_kernel(
    const T* __restrict__ dy,
    const T* __restrict__ x,
    const W* __restrict__ weight,
    const float* __restrict__ rstd,
    const T* __restrict__ dsum,
    T* __restrict__ dx,
    float* __restrict__ dweight_partial,
    int64_t rows,
    int cols) {
  __shared__ float scratch[kWarpSize];
  float* dw = dweight_partial + static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * cols;
    const float r = rstd[row];
    float dot = 0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      dot += static_cast<float>(x[base + j]) * r * static_cast<float>(weight[j]) *
             static_cast<float>(dy[base + j]);
    }
    const float mean_dot = block_sum(dot, scratch) / cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float xhat = static_cast<float>(x[base + j]) * r;
      const float g = static_cast<float>(dy[base + j]);
      float d = (static_cast<float>(weight[j]) * g - xhat * mean_dot) * r;
      if (dsum != nullptr) {
        d += static_cast<float>(dsum[base + j]);
      }
      dx[base + j] = static_cast<T>(d);
      dw[j] += g * xhat;
    }
  }
}

int round_up(int value, int multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Threads per block: about 8 columns per thread, a whole number of warps.
int threads_for(int cols) {
  return std::min(kMaxThreads, std::max(kWarpSize, round_up((cols + 7) / 8, kWarpSize)));
}

// Enough blocks to keep every SM busy, never more than there are rows.
int blocks_for(int64_t rows, int threads, int max_threads_per_sm) {
  int device = 0;
  int sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t per_sm = std::max(1, max_threads_per_sm / threads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, sms * per_sm)));
}

template <typename T>
const T* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

template <typename T, typename W>
void launch_forward(
    const at::Tensor& x,
    const std::optional<at::Tensor>& residual,
    const at::Tensor& weight,
    at::Tensor& y,
    at::Tensor& h,
    at::Tensor& rstd,
    double eps) {
  const int64_t rows = x.size(0);
  const int cols = static_cast<int>(x.size(1));
  const int threads = threads_for(cols);
  rms_norm_forward_kernel<T, W><<<blocks_for(rows, threads, 2048), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<T>(),
      optional_data<T>(residual),
      weight.data_ptr<W>(),
      y.data_ptr<T>(),
      h.defined() ? h.data_ptr<T>() : nullptr,
      rstd.data_ptr<float>(),
      rows,
      cols,
      eps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename W, int kCols>
void launch_backward_registers(
    const at::Tensor& dy,
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& rstd,
    const std::optional<at::Tensor>& dsum,
    at::Tensor& dx,
    at::Tensor& partial,
    int threads) {
  rms_norm_backward_kernel<T, W, kCols>
      <<<static_cast<int>(partial.size(0)), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          dy.data_ptr<T>(),
          x.data_ptr<T>(),
          weight.data_ptr<W>(),
          rstd.data_ptr<float>(),
          optional_data<T>(dsum),
          dx.data_ptr<T>(),
          partial.data_ptr<float>(),
          x.size(0),
          static_cast<int>(x.size(1)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename W>
void launch_backward(
    const at::Tensor& dy,
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& rstd,
    const std::optional<at::Tensor>& dsum,
    at::Tensor& dx,
    at::Tensor& partial) {
  const int cols = static_cast<int>(x.size(1));
  const int threads = threads_for(cols);
  const int cols_per_thread = (cols + threads - 1) / threads;
  if (cols_per_thread <= 1) {
    launch_backward_registers<T, W, 1>(dy, x, weight, rstd, dsum, dx, partial, threads);
  } else if (cols_per_thread <= 2) {
    launch_backward_registers<T, W, 2>(dy, x, weight, rstd, dsum, dx, partial, threads);
  } else if (cols_per_thread <= 4) {
    launch_backward_registers<T, W, 4>(dy, x, weight, rstd, dsum, dx, partial, threads);
  } else if (cols_per_thread <= kMaxColsPerThread) {
    launch_backward_registers<T, W, kMaxColsPerThread>(dy, x, weight, rstd, dsum, dx, partial, threads);
  } else {
    rms_norm_backward_wide_kernel<T, W>
        <<<static_cast<int>(partial.size(0)), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            dy.data_ptr<T>(),
            x.data_ptr<T>(),
            weight.data_ptr<W>(),
            rstd.data_ptr<float>(),
            optional_data<T>(dsum),
            dx.data_ptr<T>(),
            partial.data_ptr<float>(),
            x.size(0),
            cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Calls fn.template operator()<T, W>() for the (input, weight) dtype pair:
// the weight is in the input's dtype or float32.
template <typename Fn>
void dispatch_dtypes(const at::Tensor& x, const at::Tensor& weight, const char* name, Fn&& fn) {
  const auto by_weight = [&]<typename T>() {
    if (weight.scalar_type() == x.scalar_type()) {
      fn.template operator()<T, T>();
    } else {
      TORCH_CHECK(
          weight.scalar_type() == at::kFloat,
          name, ": weight must be float32 or x's dtype, got ", weight.scalar_type());
      fn.template operator()<T, float>();
    }
  };
  switch (x.scalar_type()) {
    case at::kFloat:
      by_weight.template operator()<float>();
      break;
    case at::kHalf:
      by_weight.template operator()<at::Half>();
      break;
    case at::kBFloat16:
      by_weight.template operator()<at::BFloat16>();
      break;
    default:
      TORCH_CHECK(false, name, ": x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
}

}  // namespace

std::vector<at::Tensor> rms_norm_forward_cuda(
    const at::Tensor& x,
    const std::optional<at::Tensor>& residual,
    const at::Tensor& weight,
    double eps) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor y = at::empty_like(x);
  at::Tensor h = residual.has_value() ? at::empty_like(x) : at::Tensor();
  at::Tensor rstd = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.numel() == 0) {
    return {y, h, rstd};
  }
  dispatch_dtypes(x, weight, "rms_norm_forward_cuda", [&]<typename T, typename W>() {
    launch_forward<T, W>(x, residual, weight, y, h, rstd, eps);
  });
  return {y, h, rstd};
}

std::vector<at::Tensor> rms_norm_backward_cuda(
    const at::Tensor& dy,
    const at::Tensor& normed_input,
    const at::Tensor& weight,
    const at::Tensor& rstd,
    const std::optional<at::Tensor>& dsum) {
  const c10::cuda::CUDAGuard device_guard(dy.device());
  const int64_t rows = normed_input.size(0);
  const int threads = threads_for(static_cast<int>(normed_input.size(1)));
  at::Tensor dx = at::empty_like(normed_input);
  // Zeroed: the wide path accumulates into it; the register path overwrites it.
  at::Tensor partial = at::zeros(
      {rows == 0 ? 1 : blocks_for(rows, threads, 1024), normed_input.size(1)},
      rstd.options());
  if (rows > 0) {
    dispatch_dtypes(normed_input, weight, "rms_norm_backward_cuda", [&]<typename T, typename W>() {
      launch_backward<T, W>(dy, normed_input, weight, rstd, dsum, dx, partial);
    });
  }
  return {dx, partial.sum(0).to(weight.scalar_type())};
}

}  // namespace chatbaker
