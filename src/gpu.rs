//! The GPUs a run uses, as NVIDIA's management library sees them (NVML,
//! loaded at run time: without the driver there are no samples, and no
//! error). Sampled on a thread of its own, at most once a second, never on
//! the engine's.
use crossbeam_channel::{bounded, Receiver, TrySendError};
use nvml_wrapper::{enum_wrappers::device::TemperatureSensor, enums::device::UsedGpuMemory, Nvml};
use std::{path::Path, time::Duration};
use tch::Device;

/// One GPU at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub index: u32,
    /// Percent of the last sample period a kernel ran.
    pub utilization: u32,
    pub used_mb: f64,
    pub total_mb: f64,
    pub temperature: u32,
    /// What this process holds on it, when the driver says.
    pub process_mb: Option<f64>,
}

impl Sample {
    /// "GPU0 87% · 30.1/80.0 GB · 64°C".
    pub fn describe(&self) -> String {
        format!(
            "GPU{} {}% · {:.1}/{:.1} GB · {}°C",
            self.index,
            self.utilization,
            self.used_mb / 1024.0,
            self.total_mb / 1024.0,
            self.temperature
        )
    }
}

pub struct Monitor(Nvml);

const MB: f64 = 1024.0 * 1024.0;

impl Monitor {
    /// NVML from the driver's library; None without one.
    pub fn open() -> Option<Monitor> {
        Nvml::init().ok().map(Monitor)
    }

    /// NVML from the library at `lib`; None when it is not one.
    pub fn open_at(lib: &Path) -> Option<Monitor> {
        Nvml::builder().lib_path(lib.as_os_str()).init().ok().map(Monitor)
    }

    /// The devices that answer, by CUDA index (as libtorch numbers them).
    pub fn sample(&self, devices: &[u32]) -> Vec<Sample> {
        let me = std::process::id();
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        devices
            .iter()
            .filter_map(|&index| {
                let d = match nvml_device(index, visible.as_deref())? {
                    NvmlDevice::Index(i) => self.0.device_by_index(i),
                    NvmlDevice::Uuid(u) => self.0.device_by_uuid(u.as_str()),
                }
                .ok()?;
                let memory = d.memory_info().ok()?;
                let process_mb = d.running_compute_processes().ok().and_then(|ps| {
                    ps.iter().find(|p| p.pid == me).and_then(|p| match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b as f64 / MB),
                        UsedGpuMemory::Unavailable => None,
                    })
                });
                Some(Sample {
                    index,
                    utilization: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
                    used_mb: memory.used as f64 / MB,
                    total_mb: memory.total as f64 / MB,
                    temperature: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
                    process_mb,
                })
            })
            .collect()
    }
}

/// How NVML finds a GPU.
#[derive(Debug, PartialEq)]
enum NvmlDevice {
    Index(u32),
    Uuid(String),
}

/// The NVML device of CUDA device `index`. NVML ignores
/// `CUDA_VISIBLE_DEVICES` (which SLURM and torchrun's users set): CUDA's
/// `index` is the index-th entry there, a physical index or a `GPU-` UUID.
/// None where it cannot be told (a MIG instance, a malformed list). Without
/// the variable the two agree (CUDA numbers as NVML does with
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID`, and on a node of one GPU model).
fn nvml_device(index: u32, visible: Option<&str>) -> Option<NvmlDevice> {
    let Some(list) = visible else {
        return Some(NvmlDevice::Index(index));
    };
    let entry = list.split(',').map(str::trim).nth(index as usize)?;
    if entry.starts_with("GPU-") {
        Some(NvmlDevice::Uuid(entry.to_owned()))
    } else {
        entry.parse().ok().map(NvmlDevice::Index)
    }
}

/// How often samples are taken.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Samples of `device`'s GPU every `PERIOD` on a thread of its own, until
/// the receiver is dropped; None on the CPU or without NVML.
pub fn watch(device: Device) -> Option<Receiver<Vec<Sample>>> {
    let Device::Cuda(index) = device else {
        return None;
    };
    let monitor = Monitor::open()?;
    let (tx, rx) = bounded(1);
    std::thread::Builder::new()
        .name("vggtrain-gpu".into())
        .spawn(move || loop {
            // A face that has not read the last one gets the next one later.
            if let Err(TrySendError::Disconnected(_)) = tx.try_send(monitor.sample(&[index as u32])) {
                break;
            }
            std::thread::sleep(PERIOD);
        })
        .ok()?;
    Some(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_nvml_there_is_no_monitor_and_no_error() {
        assert!(Monitor::open_at(Path::new("/nonexistent/libnvidia-ml.so.1")).is_none());
        assert!(Monitor::open_at(Path::new("/etc/hostname")).is_none(), "not a library");
        assert!(watch(Device::Cpu).is_none(), "nothing to watch on the CPU");
    }

    #[test]
    fn a_sample_reads_as_the_header_shows_it() {
        let s = Sample {
            index: 0,
            utilization: 87,
            used_mb: 30.1 * 1024.0,
            total_mb: 80.0 * 1024.0,
            temperature: 64,
            process_mb: Some(2048.0),
        };
        assert_eq!(s.describe(), "GPU0 87% · 30.1/80.0 GB · 64°C");
    }

    #[test]
    fn cuda_visible_devices_maps_cuda_indices_to_nvml_ones() {
        use NvmlDevice::*;
        assert_eq!(nvml_device(1, None), Some(Index(1)));
        assert_eq!(nvml_device(0, Some("3,1")), Some(Index(3)));
        assert_eq!(nvml_device(1, Some("3, 1")), Some(Index(1)));
        assert_eq!(nvml_device(0, Some("GPU-8f2a")), Some(Uuid("GPU-8f2a".into())));
        assert_eq!(nvml_device(2, Some("3,1")), None, "not visible");
        assert_eq!(nvml_device(0, Some("MIG-1c2d")), None);
        assert_eq!(nvml_device(0, Some("")), None);
    }
}
