// memory_address CUDA glue: argument checks, device guard, current stream, dtype mapping, the slot
// norms and the two small reductions of the backward (over the queries: gamma_s = sum_n gs*score,
// and the sum of the grad_mem partials); the kernels live in memory_kernels.cu (CUDA headers only).
// Registers torch.ops.mgnet_C.memory_address_{forward,backward}_cuda.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <tuple>

#include "../common/cuda_glue.h"
#include "../common/torch_glue.h"
#include "memory_args.h"
#include "memory_cuda.h"

namespace {

using mgnet::acc_type;
using mgnet::DType;

constexpr double kEps = 1e-12;  // mgnet.ops.memory.EPS

// what only the CUDA kernels need: S, C and S * C in int32
void check_int32_sizes(const at::Tensor& q, const at::Tensor& mem, const char* fn) {
  TORCH_CHECK(mem.size(0) <= INT_MAX && q.size(1) <= INT_MAX && mem.size(0) * q.size(1) <= INT_MAX, fn,
              ": mem is too large (S * C must fit in int32)");
}

// raw slot norms and 1 / max(norm, eps), in the accumulation type
std::tuple<at::Tensor, at::Tensor> slot_norms(const at::Tensor& mem) {
  at::Tensor raw = at::linalg_vector_norm(mem.to(acc_type(mem.scalar_type())), 2, {1});
  at::Tensor inv = raw.clamp_min(kEps).reciprocal().contiguous();
  return {raw, inv};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_address_forward_cuda(const at::Tensor& q_, const at::Tensor& mem_) {
  const char* fn = "memory_address_forward_cuda";
  mgnet_memory::check_forward_args(fn, /*cuda=*/true, q_, mem_);
  check_int32_sizes(q_, mem_, fn);
  const DType dt = mgnet::to_dtype(q_.scalar_type(), fn, "q");
  const at::cuda::CUDAGuard device_guard(q_.device());
  const at::Tensor q = q_.contiguous(), mem = mem_.contiguous();
  const int64_t N = q.size(0), C = q.size(1), S = mem.size(0);
  at::Tensor W = at::empty({N, S}, q.options());
  at::Tensor read = at::empty({N, C}, q.options());
  at::Tensor top2 = at::empty({N, 2}, q.options().dtype(at::kLong));
  if (N == 0) return {W, read, top2};
  auto [raw, inv_mn] = slot_norms(mem);
  const at::ScalarType acc = acc_type(q.scalar_type());
  // float / double weights double as the score scratch; half / bfloat16 get a float one
  at::Tensor scratch = q.scalar_type() == acc ? W : at::empty({N, S}, q.options().dtype(acc));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = mgnet_memory::forward_launch(
      q.data_ptr(), mem.data_ptr(), inv_mn.data_ptr(), dt, W.data_ptr(), scratch.data_ptr(),
      top2.data_ptr<int64_t>(), read.data_ptr(), N, static_cast<int>(S), static_cast<int>(C), kEps, stream);
  mgnet::check_launch(err, fn);
  return {W, read, top2};
}

std::tuple<at::Tensor, at::Tensor> memory_address_backward_cuda(const at::Tensor& grad_weights_,
                                                                const at::Tensor& grad_read_, const at::Tensor& q_,
                                                                const at::Tensor& mem_, const at::Tensor& weights_) {
  const char* fn = "memory_address_backward_cuda";
  mgnet_memory::check_backward_args(fn, /*cuda=*/true, grad_weights_, grad_read_, q_, mem_, weights_);
  check_int32_sizes(q_, mem_, fn);
  const int64_t N = q_.size(0), C = q_.size(1), S = mem_.size(0);
  const at::cuda::CUDAGuard device_guard(q_.device());
  const at::Tensor q = q_.contiguous(), mem = mem_.contiguous(), W = weights_.contiguous();
  const at::Tensor gW = grad_weights_.contiguous(), gR = grad_read_.contiguous();
  at::Tensor gq = at::empty_like(q);
  if (N == 0 || C == 0) return {gq.zero_(), at::zeros_like(mem)};
  const at::ScalarType acc = acc_type(q.scalar_type());
  const auto acc_opts = q.options().dtype(acc);
  auto [raw, inv_mn] = slot_norms(mem);
  at::Tensor b = at::empty({N, S}, acc_opts), gsc = at::empty({N, S}, acc_opts);
  const DType dt = mgnet::to_dtype(q.scalar_type(), fn, "q");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  cudaError_t err = mgnet_memory::backward_rows_launch(gW.data_ptr(), gR.data_ptr(), q.data_ptr(), mem.data_ptr(),
                                                       W.data_ptr(), inv_mn.data_ptr(), dt, b.data_ptr(),
                                                       gsc.data_ptr(), gq.data_ptr(), N, static_cast<int>(S),
                                                       static_cast<int>(C), kEps, stream);
  mgnet::check_launch(err, fn, "row kernel");
  const int splits = mgnet_memory::gmem_splits(N, static_cast<int>(S), static_cast<int>(C));
  at::Tensor part = at::empty({splits, S, C}, acc_opts);
  err = mgnet_memory::gmem_launch(W.data_ptr(), b.data_ptr(), gR.data_ptr(), q.data_ptr(), dt, part.data_ptr(), N,
                                  static_cast<int>(S), static_cast<int>(C), splits, stream);
  mgnet::check_launch(err, fn, "grad_mem kernel");
  // gamma_s = [||m_s|| >= eps] sum_n gs*score / |m_s|^2: F.normalize's gradient along m_s
  at::Tensor gamma = at::where(raw >= kEps, gsc.sum(0) * inv_mn * inv_mn, at::zeros_like(raw));
  at::Tensor gm = part.sum(0) - gamma.unsqueeze(1) * mem.to(acc);
  return {gq, gm.to(mem.scalar_type())};
}

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("memory_address_forward_cuda", &memory_address_forward_cuda);
  m.def("memory_address_backward_cuda", &memory_address_backward_cuda);
}
