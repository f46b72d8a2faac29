//! SGD with momentum and weight decay over tensors the engine owns, so that
//! its state (the momentum buffers) can be checkpointed. Step for step the
//! same as PyTorch's (and tch's) SGD without dampening or Nesterov.
use std::collections::HashMap;
use tch::{nn::VarStore, Tensor};

pub struct Sgd {
    params: Vec<(String, Tensor)>,
    buffers: Vec<Option<Tensor>>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub decay_biases: bool,
}

impl Sgd {
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64, decay_biases: bool) -> Sgd {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = params.iter().map(|_| None).collect();
        Sgd {
            params,
            buffers,
            momentum,
            weight_decay,
            decay_biases,
        }
    }

    /// The parameters, sorted by name.
    pub fn params(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.shallow_clone()).collect()
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// p -= lr * buf, buf = momentum * buf + (grad + wd * p); the first step
    /// starts the buffer at the gradient, as PyTorch does.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((name, p), buf) in self.params.iter_mut().zip(&mut self.buffers) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay != 0.0 && (self.decay_biases || !name.ends_with(".bias")) {
                    g + &*p * self.weight_decay
                } else {
                    g
                };
                let b = match buf.take() {
                    Some(mut b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                        b
                    }
                    None => d.detach().copy(),
                };
                let _ = p.g_sub_(&(&b * lr));
                *buf = Some(b);
            }
        });
    }

    /// The momentum buffers by parameter name (absent before the first step).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.shallow_clone())))
            .collect()
    }

    pub fn load_buffers(&mut self, mut saved: HashMap<String, Tensor>) -> Result<(), String> {
        for ((name, p), buf) in self.params.iter().zip(&mut self.buffers) {
            *buf = match saved.remove(name) {
                Some(b) if b.size() == p.size() => Some(b.to_device(p.device()).to_kind(p.kind())),
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
