//! Initialisation schemes. Biases start at 0 in every scheme.
use super::{Layer, Vgg};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// How the weights of a fresh network are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// The paper read literally: normal, mean 0, variance 1e-2 (std 0.1).
    /// Stalls at chance for the deeper configurations without a warm start.
    Paper,
    /// Normal, mean 0, with the given standard deviation (e.g. 0.01).
    Normal(f64),
    /// Glorot & Bengio (2010), uniform; the paper's note for deep nets.
    Glorot,
    /// He et al. (2015): normal with variance 2/fan (fan-out for the
    /// convolutions, as torchvision; fan-in for the hidden FC layers) and
    /// 1/fan-in for the last layer, which has no ReLU. The default: the
    /// logits start within an order of magnitude of 1 for every configuration
    /// and width (the literal `paper` scheme gives D logits near 1e7), so
    /// every configuration trains from scratch.
    Kaiming,
}

impl InitScheme {
    pub fn apply(self, vgg: &Vgg) {
        tch::no_grad(|| {
            for layer in &vgg.features {
                if let Layer::Conv { conv, bn } = layer {
                    let [cout, cin, kh, kw] = conv.ws.size()[..] else {
                        unreachable!("conv weights are 4-d")
                    };
                    let fan_in = cin * kh * kw;
                    let fan_out = cout * kh * kw;
                    let std = match self {
                        InitScheme::Kaiming => Some((2.0 / fan_out as f64).sqrt()),
                        _ => None,
                    };
                    self.fill(&conv.ws, fan_in, fan_out, std);
                    zero(conv.bs.as_ref());
                    if let Some(bn) = bn {
                        if let Some(w) = &bn.ws {
                            let _ = w.shallow_clone().fill_(1.0);
                        }
                        zero(bn.bs.as_ref());
                    }
                }
            }
            for (i, fc) in vgg.fc.iter().enumerate() {
                let [fout, fin] = fc.ws.size()[..] else {
                    unreachable!("linear weights are 2-d")
                };
                let gain = if i + 1 < vgg.fc.len() { 2.0 } else { 1.0 };
                let std = (self == InitScheme::Kaiming).then_some((gain / fin as f64).sqrt());
                self.fill(&fc.ws, fin, fout, std);
                zero(fc.bs.as_ref());
            }
        });
    }

    /// Fills `w`; `kaiming_std` is the standard deviation Kaiming uses for it.
    fn fill(self, w: &Tensor, fan_in: i64, fan_out: i64, kaiming_std: Option<f64>) {
        let mut w = w.shallow_clone();
        let _ = match self {
            InitScheme::Paper => w.normal_(0.0, 0.1),
            InitScheme::Normal(std) => w.normal_(0.0, std),
            InitScheme::Glorot => {
                let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                w.uniform_(-bound, bound)
            }
            InitScheme::Kaiming => w.normal_(0.0, kaiming_std.expect("kaiming std given")),
        };
    }
}

fn zero(t: Option<&Tensor>) {
    if let Some(t) = t {
        let _ = t.shallow_clone().zero_();
    }
}
