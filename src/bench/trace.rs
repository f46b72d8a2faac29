//! `bench --trace FILE`: libtorch's Kineto profiler over training steps,
//! written as a Chrome/Perfetto trace, and the ops that took the time.
use crate::native;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, path::Path};
use tch::{Device, Tensor};

/// One op (or GPU kernel) of the trace, summed over its calls.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OpTime {
    pub name: String,
    pub calls: usize,
    pub total_ms: f64,
    /// Of all the ops' time in the table's kind.
    pub share: f64,
}

/// The top ops of a trace: GPU kernels by their time where the trace has
/// any, else CPU ops by their self time (their time less their children's).
#[derive(Clone, Debug, Serialize)]
pub struct TopOps {
    pub trace: String,
    /// "gpu kernels" or "cpu ops (self time)".
    pub kind: String,
    pub ops: Vec<OpTime>,
}

/// Rows the table keeps.
const TOP: usize = 15;

/// Runs `steps` calls of `step` under the profiler (CPU ops, and CUDA
/// kernels on a GPU), writes the trace to `path` and reads it back.
pub fn record(path: &Path, device: Device, steps: usize, mut step: impl FnMut() -> Tensor) -> Result<TopOps> {
    // Without a GPU, Kineto logs an error of its CUDA device count when it
    // writes the trace: quiet it (a KINETO_LOG_LEVEL of the user's wins).
    if !device.is_cuda() && std::env::var_os("KINETO_LOG_LEVEL").is_none() {
        std::env::set_var("KINETO_LOG_LEVEL", "5");
    }
    native::profile_start(device)?;
    let mut last = None;
    for _ in 0..steps {
        last = Some(step());
    }
    if let Some(t) = last {
        // Waits for the GPU's queued kernels.
        let _ = t.double_value(&[]);
    }
    native::profile_stop(path)?;
    top_ops(path)
}

#[derive(Deserialize)]
struct Trace {
    #[serde(rename = "traceEvents")]
    events: Vec<TraceEvent>,
}

#[derive(Deserialize)]
struct TraceEvent {
    #[serde(default)]
    ph: String,
    #[serde(default)]
    cat: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ts: f64,
    #[serde(default)]
    dur: f64,
    #[serde(default)]
    pid: serde_json::Value,
    #[serde(default)]
    tid: serde_json::Value,
}

/// Reads a Chrome trace and sums its ops (see `TopOps`).
pub fn top_ops(path: &Path) -> Result<TopOps> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the trace {}", path.display()))?;
    let trace: Trace =
        serde_json::from_str(&text).with_context(|| format!("{} is not a Chrome trace", path.display()))?;
    let complete = |cat: &'static str| trace.events.iter().filter(move |e| e.ph == "X" && e.cat == cat);
    let kernels: Vec<(&str, f64)> = complete("kernel").map(|e| (e.name.as_str(), e.dur)).collect();
    let (kind, times) = if kernels.is_empty() {
        ("cpu ops (self time)", self_times(complete("cpu_op").collect()))
    } else {
        ("gpu kernels", kernels)
    };
    let mut sums: HashMap<&str, (usize, f64)> = HashMap::new();
    for (name, us) in &times {
        let s = sums.entry(name).or_default();
        s.0 += 1;
        s.1 += us;
    }
    let all: f64 = sums.values().map(|s| s.1).sum::<f64>().max(f64::MIN_POSITIVE);
    let mut ops: Vec<OpTime> = sums
        .into_iter()
        .map(|(name, (calls, us))| OpTime {
            name: name.to_owned(),
            calls,
            total_ms: us / 1e3,
            share: us / all,
        })
        .collect();
    ops.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.name.cmp(&b.name)));
    ops.truncate(TOP);
    Ok(TopOps {
        trace: path.display().to_string(),
        kind: kind.to_owned(),
        ops,
    })
}

/// Each op's time less the time of the ops nested in it on its thread.
fn self_times(mut ops: Vec<&TraceEvent>) -> Vec<(&str, f64)> {
    ops.sort_by(|a, b| {
        (a.pid.to_string(), a.tid.to_string(), a.ts)
            .partial_cmp(&(b.pid.to_string(), b.tid.to_string(), b.ts))
            .unwrap_or(std::cmp::Ordering::Equal)
            // An enclosing op first: the longer at the same start.
            .then(b.dur.total_cmp(&a.dur))
    });
    let mut out: Vec<(&str, f64)> = Vec::with_capacity(ops.len());
    // (index in out, end, thread) of the ops that enclose the current one.
    let mut open: Vec<(usize, f64, String)> = Vec::new();
    for e in ops {
        let thread = format!("{}/{}", e.pid, e.tid);
        while open.last().is_some_and(|(_, end, t)| *t != thread || *end <= e.ts) {
            open.pop();
        }
        if let Some((parent, _, _)) = open.last() {
            out[*parent].1 -= e.dur;
        }
        open.push((out.len(), e.ts + e.dur, thread));
        out.push((e.name.as_str(), e.dur));
    }
    out
}

impl TopOps {
    pub fn print(&self) {
        println!("trace written to {} · top {} by time:", self.trace, self.kind);
        println!("{:>7} {:>11} {:>7}  op", "calls", "total ms", "share");
        for op in &self.ops {
            println!(
                "{:>7} {:>11.2} {:>6.1}%  {}",
                op.calls,
                op.total_ms,
                100.0 * op.share,
                op.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_time_subtracts_nested_ops_on_the_same_thread_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let ev = |name: &str, ts: f64, dur: f64, tid: i64| serde_json::json!({"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid});
        let events = vec![
            ev("aten::conv2d", 0.0, 100.0, 1),
            ev("aten::convolution", 10.0, 80.0, 1),
            ev("aten::mkldnn_convolution", 20.0, 60.0, 1),
            ev("aten::relu", 100.0, 10.0, 1),
            // Another thread, overlapping in time: not a child.
            ev("aten::mkldnn_convolution", 15.0, 40.0, 2),
        ];
        std::fs::write(&path, serde_json::json!({ "traceEvents": events }).to_string()).unwrap();
        let t = top_ops(&path).unwrap();
        assert_eq!(t.kind, "cpu ops (self time)");
        let get = |n: &str| t.ops.iter().find(|o| o.name == n).unwrap().clone();
        assert_eq!(
            (
                get("aten::mkldnn_convolution").calls,
                get("aten::mkldnn_convolution").total_ms
            ),
            (2, 0.1)
        );
        assert_eq!(get("aten::conv2d").total_ms, 0.02);
        assert_eq!(get("aten::convolution").total_ms, 0.02);
        assert_eq!(get("aten::relu").total_ms, 0.01);
        assert_eq!(t.ops[0].name, "aten::mkldnn_convolution");
        assert!((t.ops.iter().map(|o| o.share).sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
