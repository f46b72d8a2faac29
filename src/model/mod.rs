//! The paper's VGG configurations (Table 1), their initialisation schemes,
//! the dense-evaluation form, and torchvision-compatible parameter names.
pub mod card;
mod init;
mod weights;

pub use card::Card;
pub use init::InitScheme;
pub use weights::{copy_weights, load_weights, warm_start_from_a};

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};
use tch::{nn, Tensor};

/// One of the six configurations of the paper's Table 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Arch {
    A,
    ALrn,
    B,
    C,
    D,
    E,
}

impl Arch {
    pub const ALL: [Arch; 6] = [Arch::A, Arch::ALrn, Arch::B, Arch::C, Arch::D, Arch::E];

    pub fn name(self) -> &'static str {
        match self {
            Arch::A => "A",
            Arch::ALrn => "A-LRN",
            Arch::B => "B",
            Arch::C => "C",
            Arch::D => "D",
            Arch::E => "E",
        }
    }

    pub fn alias(self) -> &'static str {
        match self {
            Arch::A => "vgg11",
            Arch::ALrn => "vgg11-lrn",
            Arch::B => "vgg13",
            Arch::C => "vgg16-c",
            Arch::D => "vgg16",
            Arch::E => "vgg19",
        }
    }

    /// The convolutions of each of the five blocks as (kernel, channels at
    /// full width); every block ends in a 2x2 max-pool.
    pub fn blocks(self) -> [Vec<(i64, i64)>; 5] {
        let rep = |k: usize, c: i64| vec![(3, c); k];
        let with_1x1 = |c: i64| vec![(3, c), (3, c), (1, c)];
        match self {
            Arch::A | Arch::ALrn => [rep(1, 64), rep(1, 128), rep(2, 256), rep(2, 512), rep(2, 512)],
            Arch::B => [rep(2, 64), rep(2, 128), rep(2, 256), rep(2, 512), rep(2, 512)],
            Arch::C => [rep(2, 64), rep(2, 128), with_1x1(256), with_1x1(512), with_1x1(512)],
            Arch::D => [rep(2, 64), rep(2, 128), rep(3, 256), rep(3, 512), rep(3, 512)],
            Arch::E => [rep(2, 64), rep(2, 128), rep(4, 256), rep(4, 512), rep(4, 512)],
        }
    }

    /// Weight layers: convolutions plus the three fully connected layers.
    pub fn depth(self) -> usize {
        self.blocks().iter().map(Vec::len).sum::<usize>() + 3
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        Arch::ALL
            .into_iter()
            .find(|a| key == a.name().to_ascii_lowercase() || key == a.alias())
            .ok_or_else(|| {
                format!(
                    "unknown model `{s}`: expected one of A, A-LRN, B, C, D, E \
                     (or vgg11, vgg11-lrn, vgg13, vgg16-c, vgg16, vgg19)"
                )
            })
    }
}

impl TryFrom<String> for Arch {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.name().to_owned()
    }
}

/// Everything that fixes a network's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub arch: Arch,
    /// Divides every conv and FC width (1 = the paper's network).
    pub width: i64,
    pub in_channels: i64,
    /// Training input (height, width); the classifier sees 512 x H/32 x W/32.
    pub input: (i64, i64),
    pub classes: i64,
    pub batch_norm: bool,
    pub dropout: f64,
}

/// Layers of the `features` sequence, in torchvision's numbering.
#[allow(clippy::large_enum_variant)] // a few dozen of them per network
enum Layer {
    Conv {
        conv: nn::Conv2D,
        bn: Option<nn::BatchNorm>,
    },
    Lrn,
    Pool,
}

/// A VGG network; `forward_t` returns logits (softmax belongs to the loss).
pub struct Vgg {
    pub spec: ModelSpec,
    features: Vec<Layer>,
    fc: Vec<nn::Linear>,
}

/// Where a parameter (by its torchvision name) is used in the forward
/// pass: the features' layers, then the classifier's, each by its index
/// (`features.2` before `features.10`, which a sort by name inverts).
pub fn forward_position(name: &str) -> (bool, u64, &str) {
    let mut parts = name.split('.');
    let section = parts.next().unwrap_or_default();
    let index = parts.next().and_then(|i| i.parse().ok()).unwrap_or(u64::MAX);
    (section == "classifier", index, name)
}

/// The same values with NHWC strides (libtorch's "channels last"), kept in
/// NCHW shape: tch has no memory-format API, the permute trick gives it.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Turns every 4-d variable (the conv weights) to channels-last in place.
pub fn vars_to_channels_last(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                let nhwc = channels_last(&v);
                v.set_data(&nhwc);
            }
        }
    });
}

/// AlexNet's LRN constants, as the paper uses them.
const LRN_SIZE: i64 = 5;
const LRN_K: f64 = 2.0;
const LRN_ALPHA: f64 = 1e-4;
const LRN_BETA: f64 = 0.75;

impl ModelSpec {
    pub fn fc_width(&self) -> i64 {
        4096 / self.width
    }

    fn channels(&self, c: i64) -> i64 {
        c / self.width
    }

    /// Spatial size of the last feature map.
    pub fn feature_map(&self) -> (i64, i64) {
        (self.input.0 / 32, self.input.1 / 32)
    }

    pub fn fc_inputs(&self) -> i64 {
        let (h, w) = self.feature_map();
        self.channels(512) * h * w
    }

    /// Checks that the shape is buildable; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if ![1, 2, 4, 8, 16, 32, 64].contains(&self.width) {
            return Err(format!(
                "model.width = {} does not divide the channel widths 64..4096: use 1, 2, 4, 8, 16, 32 or 64",
                self.width
            ));
        }
        let (h, w) = self.input;
        if h < 32 || w < 32 || h % 32 != 0 || w % 32 != 0 {
            return Err(format!(
                "input {h}x{w} does not survive five 2x2 max-pools: use a multiple of 32 (e.g. 32 or 224)"
            ));
        }
        if !(1..=3).contains(&self.in_channels) {
            return Err(format!("{} input channels: expected 1 or 3", self.in_channels));
        }
        if self.classes < 2 {
            return Err(format!("{} classes: expected at least 2", self.classes));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout = {}: expected 0 <= p < 1", self.dropout));
        }
        Ok(())
    }

    /// (name, shape) of every trainable parameter, torchvision's names.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        self.walk_features(|index, layer| {
            if let FeatureLayer::Conv { k, cin, cout } = layer {
                out.push((format!("features.{index}.weight"), vec![cout, cin, k, k]));
                out.push((format!("features.{index}.bias"), vec![cout]));
                if self.batch_norm {
                    out.push((format!("features.{}.weight", index + 1), vec![cout]));
                    out.push((format!("features.{}.bias", index + 1), vec![cout]));
                }
            }
        });
        for (i, (fin, fout)) in self.fc_shapes().into_iter().enumerate() {
            out.push((format!("classifier.{}.weight", 3 * i), vec![fout, fin]));
            out.push((format!("classifier.{}.bias", 3 * i), vec![fout]));
        }
        out
    }

    pub fn parameter_count(&self) -> i64 {
        self.parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<i64>())
            .sum()
    }

    /// Forward-pass FLOPs for one image (a multiply-add counts as 2).
    pub fn forward_flops(&self) -> f64 {
        let (mut h, mut w) = self.input;
        let mut flops = 0.0;
        self.walk_features(|_, layer| match layer {
            FeatureLayer::Conv { k, cin, cout } => {
                flops += 2.0 * (k * k * cin * cout * h * w) as f64;
            }
            FeatureLayer::Pool => {
                h /= 2;
                w /= 2;
            }
            FeatureLayer::Lrn => {}
        });
        flops + self.fc_shapes().iter().map(|(i, o)| 2.0 * (i * o) as f64).sum::<f64>()
    }

    fn fc_shapes(&self) -> [(i64, i64); 3] {
        let f = self.fc_width();
        [(self.fc_inputs(), f), (f, f), (f, self.classes)]
    }

    /// Visits the `features` layers with their torchvision index.
    fn walk_features(&self, mut visit: impl FnMut(i64, FeatureLayer)) {
        let mut index = 0;
        let mut cin = self.in_channels;
        for (b, block) in self.arch.blocks().iter().enumerate() {
            for (j, &(k, c)) in block.iter().enumerate() {
                let cout = self.channels(c);
                visit(index, FeatureLayer::Conv { k, cin, cout });
                cin = cout;
                index += if self.batch_norm { 3 } else { 2 };
                if self.arch == Arch::ALrn && b == 0 && j == 0 {
                    visit(index, FeatureLayer::Lrn);
                    index += 1;
                }
            }
            visit(index, FeatureLayer::Pool);
            index += 1;
        }
    }

    /// ((block, position in block), "features.{i}") of each convolution.
    pub fn conv_layers(&self) -> Vec<((usize, usize), String)> {
        let mut names = Vec::new();
        self.walk_features(|index, layer| {
            if let FeatureLayer::Conv { .. } = layer {
                names.push(format!("features.{index}"));
            }
        });
        let positions = self
            .arch
            .blocks()
            .iter()
            .enumerate()
            .flat_map(|(b, block)| (0..block.len()).map(move |j| (b, j)))
            .collect::<Vec<_>>();
        positions.into_iter().zip(names).collect()
    }

    /// "VGG D (16 layers)".
    pub fn describe(&self) -> String {
        let mut s = format!("VGG {} ({} layers)", self.arch, self.arch.depth());
        if self.width != 1 {
            s += &format!(" 1/{} width", self.width);
        }
        if self.batch_norm {
            s += " +BN";
        }
        s
    }
}

#[derive(Clone, Copy)]
enum FeatureLayer {
    Conv { k: i64, cin: i64, cout: i64 },
    Lrn,
    Pool,
}

impl Vgg {
    /// Builds the network under `vs` with torchvision's parameter names and
    /// initialises it with `init`.
    pub fn new(vs: &nn::Path, spec: ModelSpec, init: InitScheme) -> Result<Vgg, String> {
        spec.validate()?;
        let features_path = vs / "features";
        let mut features = Vec::new();
        spec.walk_features(|index, layer| {
            features.push(match layer {
                FeatureLayer::Conv { k, cin, cout } => {
                    let cfg = nn::ConvConfig {
                        padding: k / 2,
                        ..Default::default()
                    };
                    let conv = nn::conv2d(&features_path / index, cin, cout, k, cfg);
                    let bn = spec
                        .batch_norm
                        .then(|| nn::batch_norm2d(&features_path / (index + 1), cout, Default::default()));
                    Layer::Conv { conv, bn }
                }
                FeatureLayer::Lrn => Layer::Lrn,
                FeatureLayer::Pool => Layer::Pool,
            })
        });
        let classifier = vs / "classifier";
        let fc = spec
            .fc_shapes()
            .iter()
            .enumerate()
            .map(|(i, &(fin, fout))| nn::linear(&classifier / (3 * i), fin, fout, Default::default()))
            .collect();
        let vgg = Vgg { spec, features, fc };
        init.apply(&vgg);
        Ok(vgg)
    }

    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for layer in &self.features {
            x = match layer {
                Layer::Conv { conv, bn: Some(bn) } => x.apply(conv).apply_t(bn, train).relu_(),
                // One autograd node: on CUDA, the bias and ReLU in one pass.
                Layer::Conv { conv, bn: None } => {
                    let bias = conv.bs.as_ref().expect("a VGG convolution has a bias");
                    crate::native::conv_bias_relu(&x, &conv.ws, bias, conv.ws.size()[2] / 2)
                }
                Layer::Lrn => local_response_norm(&x),
                Layer::Pool => x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
            };
        }
        x
    }

    /// Logits for a batch of training-size images.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let p = self.spec.dropout;
        let x = self.features_t(xs, train).flatten(1, -1);
        let x = x.apply(&self.fc[0]).relu_().dropout(p, train);
        let x = x.apply(&self.fc[1]).relu_().dropout(p, train);
        x.apply(&self.fc[2])
    }

    /// Dense evaluation (paper 3.2): the classifier as convolutions over the
    /// whole feature map of an image of any size (at least the training
    /// size), with the class score map averaged into logits.
    pub fn forward_dense(&self, xs: &Tensor) -> Tensor {
        let x = self.features_t(xs, false);
        let (h, w) = self.spec.feature_map();
        let c = self.spec.channels(512);
        let f = self.spec.fc_width();
        let conv = |x: &Tensor, l: &nn::Linear, shape: [i64; 4]| {
            x.conv2d(&l.ws.view(shape), l.bs.as_ref(), [1, 1], [0, 0], [1, 1], 1)
        };
        let x = conv(&x, &self.fc[0], [f, c, h, w]).relu_();
        let x = conv(&x, &self.fc[1], [f, f, 1, 1]).relu_();
        let x = conv(&x, &self.fc[2], [self.spec.classes, f, 1, 1]);
        x.mean_dim([2, 3].as_slice(), false, x.kind())
    }
}

/// LRN across channels as AlexNet defines it: b = a / (k + alpha * sum a^2)^beta
/// over `n` neighbouring channels. (PyTorch's local_response_norm divides
/// alpha by n; this does not, as the paper meant AlexNet's constants.)
fn local_response_norm(x: &Tensor) -> Tensor {
    let sq = x.square().unsqueeze(1);
    let sum = sq
        .avg_pool3d(
            [LRN_SIZE, 1, 1],
            [1, 1, 1],
            [LRN_SIZE / 2, 0, 0],
            false,
            true,
            None::<i64>,
        )
        .squeeze_dim(1)
        * LRN_SIZE as f64;
    x / (sum * LRN_ALPHA + LRN_K).pow_tensor_scalar(LRN_BETA)
}

#[cfg(test)]
mod tests;
