// PyTorch binding of the CUDA decode and prefill kernels: tensors -> TTTDecodeParams, launched on the
// current stream. Shapes and dtypes are validated in Python (ttt_state.check_decode_args);
// here only what would make the kernel touch memory it must not (device, layout,
// alignment, sizes) is re-checked, so a direct call cannot corrupt memory.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

#include "ttt_decode_dual.h"

namespace {

using Launch = const char* (*)(const TTTDecodeParams*, cudaStream_t);

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return TTT_F32;
    case at::kHalf: return TTT_F16;
    case at::kBFloat16: return TTT_BF16;
    case at::kDouble: return TTT_F64;
    case at::kInt: return TTT_I32;
    case at::kLong: return TTT_I64;
    default: TORCH_CHECK(false, "unsupported dtype ", t.scalar_type());
  }
}

void check(const at::Tensor& t, const char* name, const at::Device& dev, int64_t numel, int64_t align) {
  TORCH_CHECK(t.device() == dev, name, " must be on ", dev, ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.numel() == numel, name, " must have ", numel, " elements, got ", t.numel());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % align == 0, name, " must be ", align, "-byte aligned");
}

// The state, norm and position arguments every kernel shares, into p (q: [..., H, f] of B sequences).
void fill_params(TTTDecodeParams& p, const std::vector<int64_t>& weight_numel, const at::Tensor& q, int64_t B,
                 const at::Tensor& pos, const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& tib,
                 const std::vector<at::Tensor>& w, const at::Tensor& k_cache, const at::Tensor& v_cache,
                 const at::Tensor& lr_cache) {
  const auto dev = q.device();
  const int64_t H = q.size(-2), F = q.size(-1), K = tib.numel();
  TORCH_CHECK(B <= INT32_MAX && H <= INT32_MAX, "B and H must fit in 32 bits");
  check(pos, "pos", dev, B, 1);
  check(ln_w, "ln_weight", dev, H * F, 1);
  check(ln_b, "ln_bias", dev, H * F, 1);
  check(tib, "token_idx_bias", dev, K, 1);
  check(k_cache, "k_cache", dev, B * H * K * F, 16);
  check(v_cache, "v_cache", dev, B * H * K * F, 16);
  check(lr_cache, "lr_cache", dev, B * H * K, 4);
  TORCH_CHECK(lr_cache.scalar_type() == at::kFloat, "lr_cache must be float32");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "q and the k/v caches must share one dtype");
  TORCH_CHECK(pos.scalar_type() == at::kInt || pos.scalar_type() == at::kLong, "pos must be int32 or int64");
  TORCH_CHECK(w.size() == weight_numel.size(), "expected ", weight_numel.size(), " weight tensors");
  for (size_t i = 0; i < w.size(); ++i) {
    check(w[i], "state weight", dev, B * H * weight_numel[i], 16);
    TORCH_CHECK(w[i].scalar_type() == w[0].scalar_type(), "state weights must share one dtype");
    p.w[i] = w[i].data_ptr();
  }
  p.pos = pos.data_ptr();
  p.ln_w = ln_w.data_ptr();
  p.ln_b = ln_b.data_ptr();
  p.tib = tib.data_ptr();
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.lr_cache = lr_cache.data_ptr<float>();
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.F = static_cast<int>(F);
  p.K = static_cast<int>(K);
  p.act_dtype = dtype_code(q);
  p.state_dtype = dtype_code(w[0]);
  p.ln_w_dtype = dtype_code(ln_w);
  p.ln_b_dtype = dtype_code(ln_b);
  p.tib_dtype = dtype_code(tib);
  p.pos_dtype = dtype_code(pos);
}

void run(Launch launch, const std::vector<int64_t>& weight_numel, const at::Tensor& q, const at::Tensor& k,
         const at::Tensor& v, const at::Tensor& lr, const at::Tensor& pos, const at::Tensor& ln_w,
         const at::Tensor& ln_b, const at::Tensor& tib, const at::Tensor& out, const std::vector<at::Tensor>& w,
         const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& lr_cache) {
  TORCH_CHECK(q.is_cuda() && q.dim() == 3, "q must be a [B, H, f] CUDA tensor");
  const auto dev = q.device();
  const int64_t B = q.size(0), H = q.size(1), F = q.size(2);
  TTTDecodeParams p = {};
  fill_params(p, weight_numel, q, B, pos, ln_w, ln_b, tib, w, k_cache, v_cache, lr_cache);
  check(q, "q", dev, B * H * F, 4);
  check(out, "out", dev, B * H * F, 4);
  check(k, "k", dev, B * H * F, 16);
  check(v, "v", dev, B * H * F, 16);
  check(lr, "lr", dev, B * H, 1);
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  out.scalar_type() == q.scalar_type(),
              "q, k, v and out must share one dtype");
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.lr = lr.data_ptr();
  p.out = out.data_ptr();
  p.lr_dtype = dtype_code(lr);

  const c10::cuda::CUDAGuard guard(dev);
  const char* err = launch(&p, c10::cuda::getCurrentCUDAStream(dev.index()).stream());
  TORCH_CHECK(err == nullptr, "CUDA TTT decode kernel: ", err ? err : "");
}

void linear(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr, const at::Tensor& pos,
            const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& tib, const at::Tensor& out,
            const at::Tensor& W, const at::Tensor& b, const at::Tensor& k_cache, const at::Tensor& v_cache,
            const at::Tensor& lr_cache) {
  const int64_t f = q.size(-1);
  run(ttt_linear_decode_dual_launch, {f * f, f}, q, k, v, lr, pos, ln_w, ln_b, tib, out, {W, b}, k_cache, v_cache,
      lr_cache);
}

void mlp(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr, const at::Tensor& pos,
         const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& tib, const at::Tensor& out,
         const at::Tensor& W1, const at::Tensor& b1, const at::Tensor& W2, const at::Tensor& b2,
         const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& lr_cache) {
  const int64_t f = q.size(-1);
  run(ttt_mlp_decode_dual_launch, {4 * f * f, 4 * f, 4 * f * f, f}, q, k, v, lr, pos, ln_w, ln_b, tib, out,
      {W1, b1, W2, b2}, k_cache, v_cache, lr_cache);
}

// [B, T, H, f] prompt rows read 16 bytes at a time: heads contiguous, every row 16-byte aligned
void check_rows(const at::Tensor& x, const char* name, const at::Tensor& q) {
  TORCH_CHECK(x.device() == q.device() && x.dim() == 4 && x.sizes() == q.sizes() && x.scalar_type() == q.scalar_type(),
              name, " must be a [B, T, H, f] tensor like q");
  const int64_t es = x.element_size();
  TORCH_CHECK(x.stride(3) == 1 && (x.size(2) == 1 || x.stride(2) == x.size(3)), name, ": heads must be contiguous");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && (x.stride(0) * es) % 16 == 0 &&
                  (x.stride(1) * es) % 16 == 0 && (x.size(3) * es) % 16 == 0,
              name, ": every row must be 16-byte aligned");
}

void mlp_prefill(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
                 const at::Tensor& pos, const at::Tensor& lengths, const at::Tensor& ln_w, const at::Tensor& ln_b,
                 const at::Tensor& tib, const at::Tensor& out, const at::Tensor& W1, const at::Tensor& b1,
                 const at::Tensor& W2, const at::Tensor& b2, const at::Tensor& k_cache, const at::Tensor& v_cache,
                 const at::Tensor& lr_cache) {
  TORCH_CHECK(q.is_cuda() && q.dim() == 4, "q must be a [B, T, H, f] CUDA tensor");
  const auto dev = q.device();
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), F = q.size(3);
  TORCH_CHECK(T <= INT32_MAX && T * H * F < (int64_t(1) << 31), "one sequence must span fewer than 2**31 elements");
  TTTPrefillParams p = {};
  fill_params(p.d, {4 * F * F, 4 * F, 4 * F * F, F}, q, B, pos, ln_w, ln_b, tib, {W1, b1, W2, b2}, k_cache, v_cache,
              lr_cache);
  check_rows(q, "q", q);
  check_rows(k, "k", q);
  check_rows(v, "v", q);
  check(out, "out", dev, B * T * H * F, 4);
  TORCH_CHECK(out.scalar_type() == q.scalar_type(), "out must have q's dtype");
  check(lr, "lr", dev, B * T * H, 1);
  check(lengths, "lengths", dev, B, 1);
  TORCH_CHECK(lengths.scalar_type() == at::kInt || lengths.scalar_type() == at::kLong, "lengths must be int32/int64");
  p.d.q = q.data_ptr();
  p.d.k = k.data_ptr();
  p.d.v = v.data_ptr();
  p.d.lr = lr.data_ptr();
  p.d.out = out.data_ptr();
  p.d.lr_dtype = dtype_code(lr);
  p.lengths = lengths.data_ptr();
  p.len_dtype = dtype_code(lengths);
  p.T = static_cast<int>(T);
  p.sq_b = q.stride(0);
  p.sq_t = q.stride(1);
  p.sk_b = k.stride(0);
  p.sk_t = k.stride(1);
  p.sv_b = v.stride(0);
  p.sv_t = v.stride(1);

  const c10::cuda::CUDAGuard guard(dev);
  const char* err = ttt_mlp_prefill_launch(&p, c10::cuda::getCurrentCUDAStream(dev.index()).stream());
  TORCH_CHECK(err == nullptr, "CUDA TTT-MLP prefill kernel: ", err ? err : "");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Hand-written CUDA dual-form TTT decode kernels (see csrc/)";
  m.def("ttt_linear_decode_dual", &linear,
        "TTT-Linear decode step: (q, k, v, lr, pos, ln_w, ln_b, tib, out, W, b, k_cache, v_cache, lr_cache)");
  m.def("ttt_mlp_decode_dual", &mlp,
        "TTT-MLP decode step: (q, k, v, lr, pos, ln_w, ln_b, tib, out, W1, b1, W2, b2, k_cache, v_cache, lr_cache)");
  m.def("ttt_mlp_prefill", &mlp_prefill,
        "TTT-MLP prefill: (q, k, v, lr, pos, lengths, ln_w, ln_b, tib, out, W1, b1, W2, b2, k_cache, v_cache, "
        "lr_cache)");
}
