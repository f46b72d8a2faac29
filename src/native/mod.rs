//! The training step's pieces that tch does not expose, from libtorch's C++
//! API through a shim (`native.cpp`): autocast as `torch.autocast` enters
//! it (tch's own calls a deprecated function that warns at every use), the
//! fused SGD kernel, loss scaling's inf check, a convolution with its bias
//! and ReLU in one autograd node, pinned copies, the Kineto profiler and
//! the CUDA allocator's peak.
use anyhow::{bail, Result};
use std::{
    ffi::{c_char, c_int, c_void, CStr, CString},
    path::Path,
};
use tch::{Device, Tensor};

type T = *mut c_void;

extern "C" {
    fn vgg_native_error() -> *const c_char;
    fn vgg_autocast_enter(half: c_int) -> T;
    fn vgg_autocast_exit(state: T);
    fn vgg_autocast_state() -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn vgg_fused_sgd(
        params: *const T,
        grads: *const T,
        buffers: *const T,
        n: i64,
        nb: i64,
        wd: f64,
        momentum: f64,
        lr: T,
        grad_scale: T,
        found_inf: T,
    ) -> c_int;
    fn vgg_clear_grads(params: *const T, n: i64) -> c_int;
    fn vgg_amp_check(grads: *const T, n: i64, found_inf: T, inv_scale: T) -> c_int;
    fn vgg_conv_bias_relu(x: T, w: T, b: T, pad: i64) -> T;
    fn vgg_bias_relu_fallback() -> *const c_char;
    fn vgg_pin_memory(t: T) -> T;
    fn vgg_profile_start(cuda: c_int) -> c_int;
    fn vgg_profile_stop(path: *const c_char) -> c_int;
    fn vgg_cuda_peak_bytes(device: c_int, reset: c_int) -> i64;
}

fn error() -> String {
    // SAFETY: the shim's thread-local error string, valid until its next call.
    unsafe { CStr::from_ptr(vgg_native_error()) }
        .to_string_lossy()
        .into_owned()
}

fn check(code: c_int, what: &str) -> Result<()> {
    if code != 0 {
        bail!("{what}: {}", error());
    }
    Ok(())
}

fn ptr(t: &Tensor) -> T {
    t.as_ptr() as T
}

fn ptrs(ts: &[Tensor]) -> Vec<T> {
    ts.iter().map(ptr).collect()
}

/// A tensor the shim made (NULL: its error).
fn owned(p: T, what: &str) -> Result<Tensor> {
    if p.is_null() {
        bail!("{what}: {}", error());
    }
    // SAFETY: a heap at::Tensor the shim made for us; tch frees it.
    Ok(unsafe { Tensor::from_ptr(p as *mut torch_sys::C_tensor) })
}

/// The reduced precision of CUDA autocast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    Bf16,
    Fp16,
}

/// Leaves autocast when dropped (a panic in the forward pass too).
struct AutocastGuard(T);

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: the state vgg_autocast_enter returned on this thread.
        unsafe { vgg_autocast_exit(self.0) }
    }
}

/// Runs `f` under CUDA autocast to `half`, entered and left as
/// `torch.autocast("cuda", dtype)` does (state saved and restored, the cast
/// cache cleared at the outermost exit). The state is this thread's.
pub fn autocast<R>(half: Half, f: impl FnOnce() -> R) -> R {
    let code = match half {
        Half::Bf16 => 1,
        Half::Fp16 => 2,
    };
    // SAFETY: plain call; the state is freed by the guard's exit.
    let _guard = AutocastGuard(unsafe { vgg_autocast_enter(code) });
    f()
}

/// CUDA autocast's dtype on this thread ("bf16", "fp16" or "other"), None
/// when it is off.
pub fn autocast_dtype() -> Option<&'static str> {
    // SAFETY: plain call.
    match unsafe { vgg_autocast_state() } {
        0 => None,
        1 => Some("bf16"),
        2 => Some("fp16"),
        _ => Some("other"),
    }
}

/// One step of PyTorch's fused SGD kernel (`_fused_sgd_`: momentum, weight
/// decay, no dampening or Nesterov) over parameters, their gradients and
/// momentum buffers (none without momentum), all of one dtype and device;
/// `lr` a float32 tensor on that device. With `scaled` (grad_scale, found_inf), the gradients are
/// divided by the scale and nothing changes where found_inf is not zero.
pub fn fused_sgd(
    params: &[Tensor],
    grads: &[Tensor],
    buffers: &[Tensor],
    (weight_decay, momentum): (f64, f64),
    lr: &Tensor,
    scaled: Option<(&Tensor, &Tensor)>,
) -> Result<()> {
    assert!(params.len() == grads.len() && (buffers.is_empty() || params.len() == buffers.len()));
    let (scale, inf) = scaled.map_or((std::ptr::null_mut(), std::ptr::null_mut()), |(s, f)| (ptr(s), ptr(f)));
    let (p, g, b) = (ptrs(params), ptrs(grads), ptrs(buffers));
    // SAFETY: the pointers are live tensors for the call's length.
    let code = unsafe {
        vgg_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            p.len() as i64,
            b.len() as i64,
            weight_decay,
            momentum,
            ptr(lr),
            scale,
            inf,
        )
    };
    check(code, "the fused SGD step")
}

/// Sets the parameters' gradients to none (the next backward writes them
/// instead of adding to them).
pub fn clear_grads(params: &[Tensor]) {
    let p = ptrs(params);
    // SAFETY: live tensors; assigning an undefined gradient cannot fail.
    let code = unsafe { vgg_clear_grads(p.as_ptr(), p.len() as i64) };
    check(code, "clearing the gradients").expect("clearing gradients cannot fail");
}

/// Adds 1 to `found_inf` when a gradient holds an inf or NaN, and multiplies
/// the gradients by `inv_scale` (`_amp_foreach_non_finite_check_and_unscale_`).
pub fn amp_check(grads: &[Tensor], found_inf: &Tensor, inv_scale: &Tensor) -> Result<()> {
    let g = ptrs(grads);
    // SAFETY: live tensors for the call's length.
    let code = unsafe { vgg_amp_check(g.as_ptr(), g.len() as i64, ptr(found_inf), ptr(inv_scale)) };
    check(code, "the loss scale's inf check")
}

/// relu(conv2d(x, w, b)) with stride 1 and `pad` on each side, as one
/// autograd node: on CUDA the convolution runs without its bias and one
/// pass adds the bias and applies ReLU; the CPU runs the plain ops. Its
/// gradients are the plain ops'.
pub fn conv_bias_relu(x: &Tensor, w: &Tensor, b: &Tensor, pad: i64) -> Tensor {
    // SAFETY: live tensors; the result is a new tensor (or NULL and an error).
    let out = unsafe { vgg_conv_bias_relu(ptr(x), ptr(w), ptr(b), pad) };
    owned(out, "convolution + bias + ReLU").unwrap_or_else(|e| panic!("{e}"))
}

/// Why the one-pass CUDA bias + ReLU kernel failed and plain ops serve, if
/// it did.
pub fn bias_relu_fallback() -> Option<String> {
    // SAFETY: NULL or a string the shim keeps for the process.
    let p = unsafe { vgg_bias_relu_fallback() };
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// A copy of a CPU tensor in pinned memory (for non-blocking uploads).
pub fn pin_memory(t: &Tensor) -> Result<Tensor> {
    // SAFETY: a live tensor; the result is a new tensor (or NULL).
    owned(unsafe { vgg_pin_memory(ptr(t)) }, "pinning a batch")
}

/// Starts libtorch's Kineto profiler on this thread's ops, and the GPU's
/// kernels when `device` is CUDA.
pub fn profile_start(device: Device) -> Result<()> {
    // SAFETY: plain call.
    check(
        unsafe { vgg_profile_start(device.is_cuda() as c_int) },
        "starting the profiler",
    )
}

/// Stops the profiler and writes its Chrome/Perfetto trace to `path`.
pub fn profile_stop(path: &Path) -> Result<()> {
    let c = CString::new(path.to_string_lossy().as_bytes())?;
    // SAFETY: a NUL-terminated path for the call's length.
    check(unsafe { vgg_profile_stop(c.as_ptr()) }, "writing the profiler's trace")
}

/// The CUDA allocator's peak of allocated bytes on `device` since the last
/// reset, which `reset` starts anew; None off CUDA.
pub fn cuda_peak_bytes(device: Device, reset: bool) -> Option<u64> {
    let Device::Cuda(n) = device else {
        return None;
    };
    // SAFETY: plain call; -1 without CUDA or on error.
    let peak = unsafe { vgg_cuda_peak_bytes(n as c_int, reset as c_int) };
    (peak >= 0).then_some(peak as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_is_entered_and_left_as_torch_autocast_does() {
        assert_eq!(autocast_dtype(), None);
        autocast(Half::Bf16, || {
            assert_eq!(
                autocast_dtype(),
                Some("bf16"),
                "bf16 is bfloat16, not CUDA's default float16"
            );
            autocast(Half::Fp16, || assert_eq!(autocast_dtype(), Some("fp16")));
            assert_eq!(
                autocast_dtype(),
                Some("bf16"),
                "the inner exit restores the outer state"
            );
        });
        assert_eq!(autocast_dtype(), None);
        // A panic in the forward pass leaves it too.
        let _ = std::panic::catch_unwind(|| autocast(Half::Fp16, || panic!("in the forward pass")));
        assert_eq!(autocast_dtype(), None);
    }
}
