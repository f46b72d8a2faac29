// The training step's pieces that tch does not expose, through libtorch's
// C++ API (see src/native/mod.rs): autocast entered and left as
// torch.autocast does, the fused SGD kernel, loss scaling's inf check, the
// convolution with its bias and ReLU in one autograd node, the Kineto
// profiler and the CUDA allocator's statistics. Errors: vgg_native_error.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#ifdef VGG_CUDA
#include <ATen/cuda/jiterator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "guard.hpp"

#include <atomic>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::vector<at::Tensor> list(at::Tensor** ts, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}

std::optional<at::Tensor> maybe(at::Tensor* t) {
  return t == nullptr ? std::nullopt : std::optional<at::Tensor>(*t);
}

// What autocast was before an enter, restored at its exit.
struct Autocast {
  bool enabled;
  at::ScalarType dtype;
  bool cache;
};

#ifdef VGG_CUDA
// relu(y + b) in one pass (NVRTC-compiled once by ATen's jiterator), NaN
// kept as ReLU keeps it.
const char* BIAS_RELU = R"(
template <typename T> T bias_relu(T y, T b) {
  float s = static_cast<float>(y) + static_cast<float>(b);
  return static_cast<T>((s > 0.0f || s != s) ? s : 0.0f);
})";

// Set when the one-pass kernel failed once: the plain ops serve from then on,
// and vgg_bias_relu_fallback says why.
std::atomic<bool> jiterator_failed{false};
std::string jiterator_error;
#endif

// out = y + b (per channel) then ReLU, in place of y where one pass can.
at::Tensor bias_relu(at::Tensor y, const at::Tensor& b) {
  auto bias = b.to(y.scalar_type()).view({1, -1, 1, 1});
#ifdef VGG_CUDA
  if (y.is_cuda() && !jiterator_failed.load()) {
    try {
      at::cuda::CompileAndLaunchKernel(BIAS_RELU, "bias_relu", 1, {y, y, bias}, {}, true);
      return y;
    } catch (const std::exception& e) {
      if (!jiterator_failed.exchange(true)) jiterator_error = e.what();
    }
  }
#endif
  return at::relu_(y.add_(bias));
}

}  // namespace

// The backward node's name in traces: vggtrain::ConvBiasRelu.
namespace vggtrain {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A convolution (stride 1, `pad` on each side) with its bias and ReLU:
// forward is the convolution without bias and one pass for bias + ReLU;
// backward yields the input, weight and bias gradients from ReLU's mask in
// one convolution_backward. Under CUDA autocast its operands are cast as
// autocast casts a convolution's.
struct ConvBiasRelu : public torch::autograd::Function<ConvBiasRelu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            int64_t pad) {
    at::Tensor xc = x, wc = w;
    if (x.is_cuda() && at::autocast::is_autocast_enabled(at::kCUDA)) {
      auto dt = at::autocast::get_autocast_dtype(at::kCUDA);
      xc = at::autocast::cached_cast(dt, x, at::kCUDA);
      wc = at::autocast::cached_cast(dt, w, at::kCUDA);
    }
    at::Tensor out;
    if (x.is_cuda()) {
      out = bias_relu(at::convolution(xc, wc, std::nullopt, {1, 1}, {pad, pad}, {1, 1}, false, {0, 0}, 1), b);
    } else {
      // In place: the convolution's output is this node's alone.
      out = at::convolution(xc, wc, b, {1, 1}, {pad, pad}, {1, 1}, false, {0, 0}, 1).relu_();
    }
    ctx->save_for_backward({xc, wc, out});
    ctx->saved_data["pad"] = pad;
    ctx->saved_data["channels"] = b.size(0);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto pad = ctx->saved_data["pad"].toInt();
    auto g = at::threshold_backward(grads[0], saved[2], 0);
    std::vector<int64_t> bias_sizes{ctx->saved_data["channels"].toInt()};
    auto [gx, gw, gb] =
        at::convolution_backward(g, saved[0], saved[1], bias_sizes, {1, 1}, {pad, pad}, {1, 1}, false, {0, 0}, 1,
                                 {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)});
    return {gx, gw, gb, at::Tensor()};
  }
};
}  // namespace vggtrain

extern "C" {

const char* vgg_native_error() { return vgg_last_error.c_str(); }

// CUDA autocast on, to bfloat16 (`half` 1) or float16 (2), as
// torch.autocast("cuda", dtype) enters it; the returned state goes to
// vgg_autocast_exit on the same thread.
void* vgg_autocast_enter(int half) {
  auto* saved = new Autocast{at::autocast::is_autocast_enabled(at::kCUDA),
                             at::autocast::get_autocast_dtype(at::kCUDA), at::autocast::is_autocast_cache_enabled()};
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::set_autocast_dtype(at::kCUDA, half == 1 ? at::kBFloat16 : at::kHalf);
  at::autocast::set_autocast_cache_enabled(true);
  at::autocast::increment_nesting();
  return saved;
}

void vgg_autocast_exit(void* state) {
  auto* saved = static_cast<Autocast*>(state);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(at::kCUDA, saved->enabled);
  at::autocast::set_autocast_dtype(at::kCUDA, saved->dtype);
  at::autocast::set_autocast_cache_enabled(saved->cache);
  delete saved;
}

// CUDA autocast's state on this thread: 0 off, else its dtype (1 bfloat16,
// 2 float16, 3 another).
int vgg_autocast_state() {
  if (!at::autocast::is_autocast_enabled(at::kCUDA)) return 0;
  auto dt = at::autocast::get_autocast_dtype(at::kCUDA);
  return dt == at::kBFloat16 ? 1 : dt == at::kHalf ? 2 : 3;
}

// One fused SGD step (momentum, weight decay `wd`, no dampening or Nesterov)
// over `n` parameters, with `nb` momentum buffers (n, or 0 without
// momentum); `lr` a float32 tensor on their device. With
// `grad_scale` and `found_inf` (may be NULL), the gradients are divided by
// the scale and the step is skipped where found_inf is not zero.
int vgg_fused_sgd(at::Tensor** params, at::Tensor** grads, at::Tensor** buffers, int64_t n, int64_t nb,
                  double wd, double momentum, at::Tensor* lr, at::Tensor* grad_scale, at::Tensor* found_inf) {
  return vgg_guard([&] {
    at::NoGradGuard no_grad;
    at::_fused_sgd_(list(params, n), list(grads, n), list(buffers, nb), wd, momentum, *lr, 0.0, false, false, false,
                    maybe(grad_scale), maybe(found_inf));
  });
}

// Sets the gradients of `n` parameters to none.
int vgg_clear_grads(at::Tensor** params, int64_t n) {
  return vgg_guard([&] {
    for (int64_t i = 0; i < n; ++i) params[i]->mutable_grad() = at::Tensor();
  });
}

// found_inf += 1 where any of `n` gradients holds an inf or NaN (they are
// multiplied by inv_scale: 1 leaves them as they are).
int vgg_amp_check(at::Tensor** grads, int64_t n, at::Tensor* found_inf, at::Tensor* inv_scale) {
  return vgg_guard([&] {
    auto gs = list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(gs, *found_inf, *inv_scale);
  });
}

// relu(conv2d(x, w, b, stride 1, padding pad)) as one autograd node; NULL
// on error.
at::Tensor* vgg_conv_bias_relu(at::Tensor* x, at::Tensor* w, at::Tensor* b, int64_t pad) {
  at::Tensor* out = nullptr;
  vgg_guard([&] { out = new at::Tensor(vggtrain::ConvBiasRelu::apply(*x, *w, *b, pad)); });
  return out;
}

// Why the one-pass bias + ReLU kernel is not used (it failed once), or NULL.
const char* vgg_bias_relu_fallback() {
#ifdef VGG_CUDA
  if (jiterator_failed.load()) return jiterator_error.c_str();
#endif
  return nullptr;
}

// A pinned copy of a CPU tensor; NULL on error.
at::Tensor* vgg_pin_memory(at::Tensor* t) {
  at::Tensor* out = nullptr;
  vgg_guard([&] { out = new at::Tensor(t->pin_memory()); });
  return out;
}

// Starts the Kineto profiler on this thread's ops (and CUDA's kernels with
// `cuda`).
int vgg_profile_start(int cuda) {
  return vgg_guard([&] {
    using namespace torch::profiler::impl;
    ProfilerConfig config(ProfilerState::KINETO);
    std::set<ActivityType> activities{ActivityType::CPU};
    if (cuda) activities.insert(ActivityType::CUDA);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

// Stops the profiler and writes its Chrome trace to `path`.
int vgg_profile_stop(const char* path) {
  return vgg_guard([&] { torch::autograd::profiler::disableProfiler()->save(path); });
}

// The CUDA allocator's peak of allocated bytes on `device` since the last
// reset (then reset with `reset`); -1 without CUDA.
int64_t vgg_cuda_peak_bytes(int device, int reset) {
  int64_t peak = -1;
#ifdef VGG_CUDA
  vgg_guard([&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
    peak = stats.allocated_bytes[0].peak;
    if (reset) c10::cuda::CUDACachingAllocator::resetPeakStats(device);
  });
#endif
  return peak;
}
}
