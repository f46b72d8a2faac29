//! Naming devices: `train.device` as configured ("auto", "cpu", "cuda",
//! "cuda:N"), as libtorch sees it, and as the faces show it. Below both the
//! configuration and the engine, which use it.
use anyhow::{bail, Result};
use tch::Device;

/// `device = "auto" | "cpu" | "cuda" | "cuda:N"`; None for "auto".
pub fn parse(s: &str) -> Result<Option<Device>> {
    Ok(match s.trim() {
        "auto" => None,
        "cpu" => Some(Device::Cpu),
        "cuda" => Some(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Some(Device::Cuda(n)),
            None => bail!("train.device = `{other}`: expected auto, cpu, cuda or cuda:N"),
        },
    })
}

/// The configured device; "auto" is CUDA when present.
pub fn resolve(s: &str) -> Result<Device> {
    match parse(s)? {
        None => Ok(Device::cuda_if_available()),
        Some(Device::Cuda(n)) if n as i64 >= tch::Cuda::device_count() => bail!(
            "train.device = {s}, but libtorch sees {} CUDA device(s)",
            tch::Cuda::device_count()
        ),
        Some(d) => Ok(d),
    }
}

/// CUDA device names from nvidia-smi (libtorch's C API has none).
pub fn cuda_names() -> Vec<String> {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// "cuda:0 NVIDIA H100" or "cpu x2".
pub fn describe(d: Device) -> String {
    match d {
        Device::Cuda(n) => {
            let name = cuda_names().get(n).cloned().unwrap_or_else(|| "CUDA".into());
            format!("cuda:{n} {name}")
        }
        _ => format!("cpu x{}", tch::get_num_threads()),
    }
}

/// The device a description (`describe`'s) names: another process's run,
/// as its faces learn it.
pub fn described(s: &str) -> Option<Device> {
    parse(s.split_whitespace().next()?).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_descriptions_name_their_device() {
        assert_eq!(parse("auto").unwrap(), None);
        assert_eq!(parse(" cpu ").unwrap(), Some(Device::Cpu));
        assert_eq!(parse("cuda").unwrap(), Some(Device::Cuda(0)));
        assert_eq!(parse("cuda:3").unwrap(), Some(Device::Cuda(3)));
        let err = parse("gpu0").unwrap_err().to_string();
        assert!(err.contains("`gpu0`") && err.contains("cuda:N"), "{err}");
        assert_eq!(described("cuda:1 NVIDIA H200"), Some(Device::Cuda(1)));
        assert_eq!(described(&describe(Device::Cpu)), Some(Device::Cpu));
        assert_eq!(described(""), None);
        assert_eq!(described("tpu x8"), None);
    }
}
