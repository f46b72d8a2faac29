//! TensorBoard event files (`RUN/tensorboard/events.out.tfevents.*`): the
//! TFRecord framing (length, masked CRC-32C, data, masked CRC-32C) around
//! `Event` protocol buffers, encoded here (three small messages: Event,
//! Summary with its simple values, SessionLog).
//!
//! Each process of a run writes a new file. It begins with the file version
//! and a `SessionLog` START just after the step it starts from:
//! TensorBoard's reader then drops the events an earlier process wrote past
//! that step, so a resume from an older checkpoint shows no rewound curve.
use super::Recorder;
use crate::control::{EpochStats, EvalResult, Event, RunInfo};
use anyhow::{Context, Result};
use std::{
    fs::File,
    io::Write,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

/// CRC-32C (Castagnoli), as TFRecord frames use.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0x82f6_3b78 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data
        .iter()
        .fold(!0u32, |c, &b| TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend(len);
    out.extend(masked_crc(&len).to_le_bytes());
    out.extend(data);
    out.extend(masked_crc(data).to_le_bytes());
    out
}

/// Protocol buffer encoding: varints and fields.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend(bytes);
}

/// What an event holds besides its time and step.
enum What<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(String, f32)]),
    /// SessionLog START: the run (re)starts at this step.
    Start,
}

/// An `Event` message (wall_time = 1, step = 2, file_version = 3,
/// summary = 5, session_log = 7).
fn event(wall_time: f64, step: i64, what: What) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, 1 << 3 | 1);
    out.extend(wall_time.to_le_bytes());
    varint(&mut out, 2 << 3);
    varint(&mut out, step as u64);
    match what {
        What::FileVersion(v) => bytes_field(&mut out, 3, v.as_bytes()),
        What::Scalars(values) => {
            // Summary { repeated Value value = 1 }, Value { tag = 1, simple_value = 2 }.
            let mut summary = Vec::new();
            for (tag, v) in values {
                let mut value = Vec::new();
                bytes_field(&mut value, 1, tag.as_bytes());
                varint(&mut value, 2 << 3 | 5);
                value.extend(v.to_le_bytes());
                bytes_field(&mut summary, 1, &value);
            }
            bytes_field(&mut out, 5, &summary);
        }
        // SessionLog { status = 1 }, START = 1.
        What::Start => bytes_field(&mut out, 7, &[1 << 3, 1]),
    }
    out
}

/// The newest time stamp in the names of `dir`'s event files. TensorBoard
/// reads a folder's files in name order and skips one that sorts before the
/// file it has read: a new file's name must sort after every earlier one
/// (the same second, or a clock set back, would not).
fn newest_secs(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("events.out.tfevents.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .max()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok {
        String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// A tag for TensorBoard: "/" groups, so it cannot be inside a name.
fn tag_safe(name: &str) -> String {
    name.replace('/', "_")
}

/// The recorder: one event file per process.
pub struct Writer {
    file: File,
    steps_per_epoch: u64,
    classes: Vec<String>,
    /// The global step of the newest event.
    step: u64,
}

impl Writer {
    pub fn create(dir: &Path) -> Result<Writer> {
        static FILES: AtomicU32 = AtomicU32::new(0);
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let secs = now.max(newest_secs(dir).map_or(0, |s| s + 1));
        let name = format!(
            "events.out.tfevents.{secs}.{}.{}.{}",
            hostname(),
            std::process::id(),
            FILES.fetch_add(1, Ordering::SeqCst)
        );
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Writer {
            file,
            steps_per_epoch: 1,
            classes: Vec::new(),
            step: 0,
        })
    }

    fn write(&mut self, time: f64, step: u64, what: What) -> std::io::Result<()> {
        self.step = step;
        self.file.write_all(&frame(&event(time, step as i64, what)))
    }

    fn scalars(&mut self, time: f64, step: u64, values: Vec<(String, f64)>) -> std::io::Result<()> {
        let values: Vec<(String, f32)> = values
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(t, v)| (t, v as f32))
            .collect();
        self.write(time, step, What::Scalars(&values))
    }

    fn start(&mut self, info: &RunInfo, time: f64) -> std::io::Result<()> {
        self.steps_per_epoch = info.steps_per_epoch as u64;
        self.classes = info.classes.clone();
        let step = info.start_epoch as u64 * self.steps_per_epoch + info.start_step as u64;
        self.write(time, step, What::FileVersion("brain.Event:2"))?;
        // The reader drops what came before at this step or later: the
        // start step itself (the checkpoint's) stays.
        self.write(time, step + 1, What::Start)?;
        self.step = step;
        Ok(())
    }

    fn epoch(&mut self, e: &EpochStats, time: f64) -> std::io::Result<()> {
        let step = e.epoch as u64 * self.steps_per_epoch;
        let mut v = vec![
            ("loss/train".to_owned(), e.train_loss),
            ("loss/val".to_owned(), e.val.loss),
            ("accuracy/train".to_owned(), e.train_acc),
            ("accuracy/val_top1".to_owned(), e.val.top1),
            ("accuracy/val_top5".to_owned(), e.val.top5),
            ("accuracy/best_val_top1".to_owned(), e.best_top1),
            ("optim/lr".to_owned(), e.lr),
            ("speed/epoch_seconds".to_owned(), e.seconds),
        ];
        v.extend(per_class(&self.classes, &e.val));
        self.scalars(time, step, v)
    }
}

/// "val_top1_per_class/03 Dress" for every class.
fn per_class(classes: &[String], val: &EvalResult) -> Vec<(String, f64)> {
    let width = classes.len().to_string().len();
    classes
        .iter()
        .zip(&val.per_class)
        .enumerate()
        .map(|(i, (name, acc))| (format!("val_top1_per_class/{i:0width$} {}", tag_safe(name)), *acc))
        .collect()
}

impl Recorder for Writer {
    fn record(&mut self, event: &Event, time: f64) -> std::io::Result<()> {
        match event {
            Event::Started(info) => self.start(info, time),
            Event::Step {
                global_step,
                loss,
                lr,
                images_per_sec,
                ..
            } => {
                let mut v = vec![("loss/train_step".to_owned(), *loss), ("optim/lr".to_owned(), *lr)];
                if *images_per_sec > 0.0 {
                    v.push(("speed/images_per_sec".to_owned(), *images_per_sec));
                }
                self.scalars(time, *global_step, v)
            }
            Event::Epoch(e) => self.epoch(e, time),
            Event::LrChanged { new, global_step, .. } => {
                self.scalars(time, *global_step, vec![("optim/lr".to_owned(), *new)])
            }
            // At the step training ended.
            Event::Finished { test: Some(t), .. } => {
                let v = vec![
                    ("test/top1".to_owned(), t.top1),
                    ("test/top5".to_owned(), t.top5),
                    ("test/loss".to_owned(), t.loss),
                ];
                self.scalars(time, self.step, v)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_the_mask_give_the_known_values() {
        // The CRC-32C check value, and RFC 3720's vectors.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
        // TensorFlow's mask: rotate right by 15, add 0xa282ead8.
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn a_record_frames_its_data() {
        let r = frame(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), 3);
        assert_eq!(
            u32::from_le_bytes(r[8..12].try_into().unwrap()),
            masked_crc(&3u64.to_le_bytes())
        );
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(u32::from_le_bytes(r[15..].try_into().unwrap()), masked_crc(b"abc"));
    }

    #[test]
    fn an_event_is_the_protocol_buffer_tensorflow_writes() {
        // Event { wall_time: 1.5, step: 300, summary { value { tag: "a", simple_value: 2 } } }
        let e = event(1.5, 300, What::Scalars(&[("a".into(), 2.0)]));
        let mut want = vec![0x09];
        want.extend(1.5f64.to_le_bytes());
        want.extend([0x10, 0xac, 0x02]); // 300 as a varint
        want.extend([0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'a', 0x15]);
        want.extend(2.0f32.to_le_bytes());
        assert_eq!(e, want);
        let start = event(0.0, 0, What::Start);
        assert_eq!(&start[start.len() - 4..], &[0x3a, 0x02, 0x08, 0x01]);
    }

    #[test]
    fn a_new_event_file_sorts_after_every_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        // An earlier process's file from "the future" (a clock set back since).
        let later = "events.out.tfevents.1999999999.host.99999.0";
        std::fs::write(dir.path().join(later), b"").unwrap();
        Writer::create(dir.path()).unwrap();
        Writer::create(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3);
        assert_eq!(names[0], later, "{names:?}");
        assert!(names[1].starts_with("events.out.tfevents.2000000000."), "{names:?}");
        assert!(names[2].starts_with("events.out.tfevents.2000000001."), "{names:?}");
    }
}
