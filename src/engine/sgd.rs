//! SGD with momentum and weight decay over tensors the engine owns, so that
//! its state (the momentum buffers, the loss scale) can be checkpointed.
//! Each step is PyTorch's fused kernel (`torch.optim.SGD(fused=True)`: one
//! pass over parameters, gradients and buffers), and the gradients are set
//! to none after it, so backward writes them instead of adding into zeros.
//! With fp16, dynamic loss scaling as `torch.amp.GradScaler` does it.
use crate::{model, native};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

pub struct Sgd {
    params: Vec<(String, Tensor)>,
    buffers: Vec<Option<Tensor>>,
    /// The learning rate on the parameters' device (the kernel reads it
    /// there: no host sync).
    lr: Tensor,
    pub momentum: f64,
    pub weight_decay: f64,
    pub decay_biases: bool,
    scaler: Option<LossScale>,
}

/// GradScaler's defaults: the first scale, its growth after this many steps
/// without an inf or NaN, and its factors.
const INIT_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: i64 = 2000;
const GROWTH: f64 = 2.0;
const BACKOFF: f64 = 0.5;

/// The loss scale's state in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleState {
    pub scale: f64,
    /// Steps since the scale last changed without an inf or NaN.
    pub growth: i64,
}

/// Dynamic loss scaling (fp16): the loss is multiplied by the scale before
/// backward; a step whose gradients hold an inf or NaN is skipped and the
/// scale halved, and it doubles after `interval` clean steps.
struct LossScale {
    scale: Tensor,
    growth: Tensor,
    found_inf: Tensor,
    one: Tensor,
    /// Steps skipped since the last `take_skipped`, on the device.
    skipped: Tensor,
    interval: i64,
}

impl LossScale {
    fn new(device: Device, state: ScaleState, interval: i64) -> LossScale {
        let f = (Kind::Float, device);
        LossScale {
            scale: Tensor::from_slice(&[state.scale as f32]).to_device(device),
            growth: Tensor::from_slice(&[state.growth as i32]).to_device(device),
            found_inf: Tensor::zeros([1], f),
            one: Tensor::ones([1], f),
            skipped: Tensor::zeros([], (Kind::Double, device)),
            interval,
        }
    }
}

impl Sgd {
    /// The optimiser of `vs`'s trainable variables; `loss_scale`: fp16's
    /// dynamic loss scaling.
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64, decay_biases: bool, loss_scale: bool) -> Sgd {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| model::forward_position(&a.0).cmp(&model::forward_position(&b.0)));
        let buffers = params.iter().map(|_| None).collect();
        let device = vs.device();
        let initial = ScaleState {
            scale: INIT_SCALE,
            growth: 0,
        };
        Sgd {
            params,
            buffers,
            lr: Tensor::zeros([], (Kind::Float, device)),
            momentum,
            weight_decay,
            decay_biases,
            scaler: loss_scale.then(|| LossScale::new(device, initial, GROWTH_INTERVAL)),
        }
    }

    /// The parameters in the order forward uses them
    /// (`model::forward_position`): backward finishes them in reverse.
    pub fn params(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.shallow_clone()).collect()
    }

    /// What backward runs on: the loss, times the loss scale with fp16.
    pub fn scaled(&self, loss: &Tensor) -> Tensor {
        match &self.scaler {
            Some(s) => loss * &s.scale,
            None => loss.shallow_clone(),
        }
    }

    /// buf = momentum * buf + (grad + wd * p), p -= lr * buf, over the
    /// parameters with a gradient (a new buffer starts at the gradient, as
    /// PyTorch's does; without momentum there is none); then every gradient
    /// is set to none. With fp16 the
    /// gradients are unscaled, the step skipped on an inf or NaN, and the
    /// scale updated.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _ = self.lr.fill_(lr);
        if let Some(s) = &mut self.scaler {
            let _ = s.found_inf.zero_();
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(Tensor::defined)
                .collect();
            native::amp_check(&grads, &s.found_inf, &s.one)?;
        }
        let scaled = self.scaler.as_ref().map(|s| (&s.scale, &s.found_inf));
        for decayed in [true, false] {
            let (mut params, mut grads, mut buffers) = (Vec::new(), Vec::new(), Vec::new());
            for ((name, p), buf) in self.params.iter().zip(&mut self.buffers) {
                let g = p.grad();
                let decays = self.decay_biases || !name.ends_with(".bias");
                if !g.defined() || decays != decayed {
                    continue;
                }
                params.push(p.shallow_clone());
                grads.push(g);
                if self.momentum > 0.0 {
                    // A zero buffer makes the first step's buffer the
                    // gradient exactly (0 * momentum + g).
                    buffers.push(buf.get_or_insert_with(|| p.zeros_like()).shallow_clone());
                }
            }
            if params.is_empty() {
                continue;
            }
            let wd = if decayed { self.weight_decay } else { 0.0 };
            native::fused_sgd(&params, &grads, &buffers, (wd, self.momentum), &self.lr, scaled)?;
        }
        native::clear_grads(&self.params());
        if let Some(s) = &mut self.scaler {
            s.skipped += &s.found_inf.sum(Kind::Double);
            let _ = s
                .scale
                .internal_amp_update_scale_(&s.growth, &s.found_inf, GROWTH, BACKOFF, s.interval);
        }
        Ok(())
    }

    /// The steps skipped for an inf or NaN since the last call (a host sync).
    pub fn take_skipped(&mut self) -> u64 {
        let Some(s) = &mut self.scaler else {
            return 0;
        };
        let n = s.skipped.double_value(&[]) as u64;
        let _ = s.skipped.zero_();
        n
    }

    /// The loss scale's state (fp16), for a checkpoint.
    pub fn scale_state(&self) -> Option<ScaleState> {
        self.scaler.as_ref().map(|s| ScaleState {
            scale: s.scale.double_value(&[0]),
            growth: s.growth.int64_value(&[0]),
        })
    }

    /// Continues a checkpoint's loss scale (a run without one starts anew).
    pub fn load_scale(&mut self, state: Option<ScaleState>) {
        if let (Some(s), Some(state)) = (&mut self.scaler, state) {
            *s = LossScale::new(s.scale.device(), state, s.interval);
        }
    }

    /// The momentum buffers by parameter name (absent before the first step).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.shallow_clone())))
            .collect()
    }

    /// Loads momentum buffers, each in its parameter's layout (the fused
    /// kernel needs the strides to match).
    pub fn load_buffers(&mut self, mut saved: HashMap<String, Tensor>) -> Result<(), String> {
        for ((name, p), buf) in self.params.iter().zip(&mut self.buffers) {
            *buf = match saved.remove(name) {
                Some(b) if b.size() == p.size() => {
                    let mut same = p.empty_like();
                    tch::no_grad(|| same.copy_(&b));
                    Some(same.detach())
                }
                Some(b) => {
                    return Err(format!(
                        "momentum of {name} has shape {:?}, the parameter {:?}",
                        b.size(),
                        p.size()
                    ))
                }
                None => None,
            };
        }
        Ok(())
    }
}
