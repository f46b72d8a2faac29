//! Weights in and out of safetensors files with torchvision's names, and the
//! paper's warm start of a deeper configuration from a trained A.
use super::{Arch, Vgg};
use anyhow::{bail, Context, Result};
use std::{collections::HashMap, path::Path};
use tch::{nn::VarStore, Tensor};

fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = Tensor::read_safetensors(path)
        .with_context(|| format!("cannot read weights from {}: not a safetensors file", path.display()))?;
    Ok(tensors.into_iter().collect())
}

fn copy_checked(dst: &Tensor, src: &Tensor, dst_name: &str, src_name: &str, path: &Path) -> Result<()> {
    if dst.size() != src.size() {
        bail!(
            "{}: layer {src_name} has shape {:?}, but the model's {dst_name} has shape {:?} \
             (another class count, width or input size?)",
            path.display(),
            src.size(),
            dst.size()
        );
    }
    tch::no_grad(|| dst.shallow_clone().copy_(&src.to_kind(dst.kind())));
    Ok(())
}

/// Loads every parameter of `vs` from a safetensors file that names them as
/// torchvision does (an exported model or a vggtrain checkpoint).
pub fn load_weights(vs: &VarStore, path: &Path) -> Result<()> {
    copy_weights(vs, &read(path)?, path)
}

/// Copies every parameter of `vs` from tensors already read from `path`.
pub fn copy_weights(vs: &VarStore, file: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    for (name, var) in vs.variables() {
        let src = file
            .get(&name)
            .with_context(|| format!("{}: no tensor named {name}", path.display()))?;
        copy_checked(&var, src, &name, &name, path)?;
    }
    Ok(())
}

/// The paper's warm start: the first four conv layers and the three FC layers
/// of a trained configuration A go into `vgg`; the rest keeps its fresh values.
/// A's first four convs sit at (block, position) (1,1), (2,1), (3,1), (3,2),
/// and are copied to the same positions of the deeper net, where their shapes
/// match. Returns "target <- source" for each copied layer.
pub fn warm_start_from_a(vgg: &Vgg, vs: &VarStore, path: &Path) -> Result<Vec<String>> {
    let file = read(path)?;
    let mut src_convs: Vec<i64> = file
        .iter()
        .filter(|(n, t)| n.starts_with("features.") && n.ends_with(".weight") && t.dim() == 4)
        .filter_map(|(n, _)| n.split('.').nth(1)?.parse().ok())
        .collect();
    src_convs.sort_unstable();
    let a_convs: usize = Arch::A.blocks().iter().map(Vec::len).sum();
    if src_convs.len() != a_convs {
        bail!(
            "{}: a warm start needs a trained configuration A (8 conv layers), this file has {}",
            path.display(),
            src_convs.len()
        );
    }
    let targets = vgg.spec.conv_layers();
    let positions = [(0, 0), (1, 0), (2, 0), (2, 1)];
    let vars = vs.variables();
    let mut copied = Vec::new();
    for (src_index, pos) in src_convs.iter().zip(positions) {
        let (_, dst) = targets
            .iter()
            .find(|(p, _)| *p == pos)
            .expect("every configuration has these positions");
        for suffix in ["weight", "bias"] {
            let src_name = format!("features.{src_index}.{suffix}");
            let dst_name = format!("{dst}.{suffix}");
            let src = file
                .get(&src_name)
                .with_context(|| format!("{}: no tensor named {src_name}", path.display()))?;
            copy_checked(&vars[&dst_name], src, &dst_name, &src_name, path)?;
        }
        copied.push(format!("{dst} <- features.{src_index}"));
    }
    for i in [0, 3, 6] {
        for suffix in ["weight", "bias"] {
            let name = format!("classifier.{i}.{suffix}");
            let src = file
                .get(&name)
                .with_context(|| format!("{}: no tensor named {name}", path.display()))?;
            copy_checked(&vars[&name], src, &name, &name, path)?;
        }
        copied.push(format!("classifier.{i} <- classifier.{i}"));
    }
    Ok(copied)
}
