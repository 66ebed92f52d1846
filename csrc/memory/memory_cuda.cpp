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

#include "memory_cuda.h"

namespace {

using mgnet_memory::DType;

constexpr double kEps = 1e-12;  // mgnet.ops.memory.EPS

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    default: TORCH_CHECK(false, "memory_address (cuda): unsupported dtype ", t);
  }
  return DType::F32;
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_arg(const at::Tensor& t, const char* name, const at::Tensor& q, const char* fn) {
  TORCH_CHECK(t.is_cuda(), fn, ": ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == q.device(), fn, ": ", name, " is on ", t.device(), " but q is on ", q.device());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), fn, ": ", name, " has dtype ", t.scalar_type(), " but q has ",
              q.scalar_type());
}

void check_shapes(const at::Tensor& q, const at::Tensor& mem, const char* fn) {
  TORCH_CHECK(q.dim() == 2 && mem.dim() == 2, fn, ": q must be (N, C) and mem (S, C), got ", q.sizes(), " and ",
              mem.sizes());
  TORCH_CHECK(q.size(1) == mem.size(1), fn, ": mem must have C=", q.size(1), " columns, got ", mem.sizes());
  TORCH_CHECK(mem.size(0) >= 1, fn, ": mem must have at least one slot");
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
  check_arg(q_, "q", q_, fn);
  check_arg(mem_, "mem", q_, fn);
  check_shapes(q_, mem_, fn);
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
      q.data_ptr(), mem.data_ptr(), inv_mn.data_ptr(), to_dtype(q.scalar_type()), W.data_ptr(), scratch.data_ptr(),
      top2.data_ptr<int64_t>(), read.data_ptr(), N, static_cast<int>(S), static_cast<int>(C), kEps, stream);
  TORCH_CHECK(err == cudaSuccess, fn, ": kernel launch failed: ", cudaGetErrorString(err));
  return {W, read, top2};
}

std::tuple<at::Tensor, at::Tensor> memory_address_backward_cuda(const at::Tensor& grad_weights_,
                                                                const at::Tensor& grad_read_, const at::Tensor& q_,
                                                                const at::Tensor& mem_, const at::Tensor& weights_) {
  const char* fn = "memory_address_backward_cuda";
  check_arg(q_, "q", q_, fn);
  check_arg(mem_, "mem", q_, fn);
  check_arg(grad_weights_, "grad_weights", q_, fn);
  check_arg(grad_read_, "grad_read", q_, fn);
  check_arg(weights_, "weights", q_, fn);
  check_shapes(q_, mem_, fn);
  const int64_t N = q_.size(0), C = q_.size(1), S = mem_.size(0);
  TORCH_CHECK(grad_weights_.sizes() == at::IntArrayRef({N, S}) && weights_.sizes() == at::IntArrayRef({N, S}), fn,
              ": grad_weights and weights must be (N, S) = (", N, ", ", S, ")");
  TORCH_CHECK(grad_read_.sizes() == q_.sizes(), fn, ": grad_read must have q's shape ", q_.sizes());
  const at::cuda::CUDAGuard device_guard(q_.device());
  const at::Tensor q = q_.contiguous(), mem = mem_.contiguous(), W = weights_.contiguous();
  const at::Tensor gW = grad_weights_.contiguous(), gR = grad_read_.contiguous();
  at::Tensor gq = at::empty_like(q);
  if (N == 0 || C == 0) return {gq.zero_(), at::zeros_like(mem)};
  const at::ScalarType acc = acc_type(q.scalar_type());
  const auto acc_opts = q.options().dtype(acc);
  auto [raw, inv_mn] = slot_norms(mem);
  at::Tensor b = at::empty({N, S}, acc_opts), gsc = at::empty({N, S}, acc_opts);
  const DType dt = to_dtype(q.scalar_type());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  cudaError_t err = mgnet_memory::backward_rows_launch(gW.data_ptr(), gR.data_ptr(), q.data_ptr(), mem.data_ptr(),
                                                       W.data_ptr(), inv_mn.data_ptr(), dt, b.data_ptr(),
                                                       gsc.data_ptr(), gq.data_ptr(), N, static_cast<int>(S),
                                                       static_cast<int>(C), kEps, stream);
  TORCH_CHECK(err == cudaSuccess, fn, ": row kernel launch failed: ", cudaGetErrorString(err));
  const int splits = mgnet_memory::gmem_splits(N, static_cast<int>(S), static_cast<int>(C));
  at::Tensor part = at::empty({splits, S, C}, acc_opts);
  err = mgnet_memory::gmem_launch(W.data_ptr(), b.data_ptr(), gR.data_ptr(), q.data_ptr(), dt, part.data_ptr(), N,
                                  static_cast<int>(S), static_cast<int>(C), splits, stream);
  TORCH_CHECK(err == cudaSuccess, fn, ": grad_mem kernel launch failed: ", cudaGetErrorString(err));
  // gamma_s = [||m_s|| >= eps] sum_n gs*score / |m_s|^2: F.normalize's gradient along m_s
  at::Tensor gamma = at::where(raw >= kEps, gsc.sum(0) * inv_mn * inv_mn, at::zeros_like(raw));
  at::Tensor gm = part.sum(0) - gamma.unsqueeze(1) * mem.to(acc);
  return {gq, gm.to(mem.scalar_type())};
}

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("memory_address_forward_cuda", &memory_address_forward_cuda);
  m.def("memory_address_backward_cuda", &memory_address_backward_cuda);
}
