//! The training step against PyTorch (tests/reference/step.py): the fused
//! SGD against `torch.optim.SGD(fused=True)` and the per-parameter loop,
//! fp16's loss scaling against `torch.amp.GradScaler`, and the fused
//! convolution + bias + ReLU against autograd's plain ops.
use super::*;
use tch::{nn::VarStore, Device, Kind};
use vggtrain::engine::sgd::Sgd;
use vggtrain::{model, native};

const LR: f64 = 0.01;
/// The plain runs' steps (after the bad ones), and the scaled run's: enough
/// for the scale to back off twice and then grow once (GradScaler's 2,000
/// clean steps).
const CLEAN: (i64, i64) = (8, 20);
const SCALED: i64 = 2012;
/// Steps whose gradients hold an inf, then a NaN.
const BAD: [(i64, f32); 2] = [(4, f32::INFINITY), (7, f32::NAN)];

const SHAPES: [(&str, &[i64]); 3] = [
    ("conv.weight", &[4, 3, 3, 3]),
    ("conv.bias", &[4]),
    ("fc.weight", &[5, 6]),
];

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn close(what: &str, got: &[f64], want: &serde_json::Value, tol: f64) {
    let want: Vec<f64> = serde_json::from_value(want.clone()).unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} against PyTorch's {w}"
        );
    }
}

/// `steps` steps of our SGD on the stacked gradients: each step's backward
/// of sum(p * g) (of the scaled loss with `scaled`) gives g as the gradient.
fn train(init: &[(String, Tensor)], grads: &HashMap<String, Tensor>, steps: i64, scaled: bool) -> (VarStore, Sgd) {
    let vs = VarStore::new(Device::Cpu);
    for (name, t) in init {
        let (path, leaf) = name.split_once('.').unwrap();
        let _ = (vs.root() / path).var_copy(leaf, t);
    }
    // The conv weight with NHWC strides, as the trainer keeps it.
    model::vars_to_channels_last(&vs);
    let mut sgd = Sgd::new(&vs, 0.9, 5e-4, false, scaled);
    let vars = vs.variables();
    for s in 0..steps {
        let loss = vars
            .iter()
            .map(|(n, p)| (p * grads[n].get(s)).sum(Kind::Float))
            .reduce(|a, b| a + b)
            .unwrap();
        sgd.scaled(&loss).backward();
        sgd.step(LR).unwrap();
        for (n, p) in &vars {
            assert!(!p.grad().defined(), "{n}'s gradient is none after a step");
        }
    }
    (vs, sgd)
}

fn check_run(what: &str, vs: &VarStore, sgd: &Sgd, want: &serde_json::Value) {
    let vars = vs.variables();
    let momentum: HashMap<String, Tensor> = sgd.buffers().into_iter().collect();
    for (name, _) in SHAPES {
        close(
            &format!("{what} {name}"),
            &values(&vars[name]),
            &want["params"][name],
            1e-6,
        );
        close(
            &format!("{what} momentum {name}"),
            &values(&momentum[name]),
            &want["momentum"][name],
            1e-6,
        );
    }
}

#[test]
fn the_fused_step_loss_scaling_and_fused_conv_equal_pytorch() {
    let Some(mut py) = common::python() else { return };
    let _serial = serial();
    tch::manual_seed(11);
    let dir = tempfile::tempdir().unwrap();
    let init: Vec<(String, Tensor)> = SHAPES
        .iter()
        .map(|(n, s)| (n.to_string(), Tensor::randn(*s, (Kind::Float, Device::Cpu))))
        .collect();
    let grads: HashMap<String, Tensor> = SHAPES
        .iter()
        .map(|(n, s)| {
            let g = Tensor::randn([&[SCALED], *s].concat(), (Kind::Float, Device::Cpu));
            for (step, bad) in BAD {
                let _ = g.get(step).view(-1).get(0).fill_(bad as f64);
            }
            (n.to_string(), g)
        })
        .collect();
    let conv: Vec<(&str, Tensor)> = vec![
        ("x", Tensor::randn([2, 3, 6, 6], (Kind::Float, Device::Cpu))),
        ("w", Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu))),
        ("b", Tensor::randn([4], (Kind::Float, Device::Cpu))),
        ("dy", Tensor::randn([2, 4, 6, 6], (Kind::Float, Device::Cpu))),
    ];
    let input = dir.path().join("in.safetensors");
    let mut all: Vec<(String, Tensor)> = init
        .iter()
        .map(|(n, t)| (format!("p.{n}"), t.shallow_clone()))
        .collect();
    all.extend(grads.iter().map(|(n, t)| (format!("g.{n}"), t.shallow_clone())));
    all.extend(conv.iter().map(|(n, t)| (n.to_string(), t.shallow_clone())));
    all.push(("hp".into(), Tensor::from_slice(&[LR, 0.9, 5e-4, 65536.0, 2000.0])));
    all.push(("clean".into(), Tensor::from_slice(&[CLEAN.0, CLEAN.1])));
    Tensor::write_safetensors(&all, &input).unwrap();
    let reference = common::ok(py.arg("tests/reference/step.py").arg(&input).output().unwrap());
    let want: serde_json::Value = serde_json::from_str(&reference).unwrap();

    let clean: HashMap<String, Tensor> = grads
        .iter()
        .map(|(n, g)| (n.clone(), g.narrow(0, CLEAN.0, CLEAN.1)))
        .collect();
    let (vs, sgd) = train(&init, &clean, CLEAN.1, false);
    check_run("fused", &vs, &sgd, &want["fused"]);
    check_run("the per-parameter loop", &vs, &sgd, &want["loop"]);

    let (vs, mut sgd) = train(&init, &grads, SCALED, true);
    check_run("scaled", &vs, &sgd, &want["scaled"]);
    let state = sgd.scale_state().unwrap();
    assert_eq!(state.scale, want["scaled"]["scale"].as_f64().unwrap());
    assert_eq!(
        state.scale, 32768.0,
        "halved twice, then doubled after 2,000 clean steps"
    );
    assert_eq!(state.growth, want["scaled"]["growth"].as_i64().unwrap());
    assert_eq!(sgd.take_skipped(), want["scaled"]["skipped"].as_u64().unwrap());
    assert_eq!(want["scaled"]["skipped"], 2);

    // relu(conv2d(x, w, b)) as one node, NCHW and NHWC, against autograd.
    let t: HashMap<&str, Tensor> = conv.into_iter().collect();
    for layout in ["nchw", "nhwc"] {
        let x = match layout {
            "nhwc" => model::channels_last(&t["x"]),
            _ => t["x"].copy(),
        }
        .set_requires_grad(true);
        let w = t["w"].copy().set_requires_grad(true);
        let b = t["b"].copy().set_requires_grad(true);
        let y = native::conv_bias_relu(&x, &w, &b, 1);
        (&y * &t["dy"]).sum(Kind::Float).backward();
        let c = &want["conv"];
        close(&format!("{layout} y"), &values(&y), &c["y"], 1e-5);
        close(&format!("{layout} dx"), &values(&x.grad()), &c["dx"], 1e-5);
        close(&format!("{layout} dw"), &values(&w.grad()), &c["dw"], 1e-5);
        close(&format!("{layout} db"), &values(&b.grad()), &c["db"], 1e-5);
    }
}
