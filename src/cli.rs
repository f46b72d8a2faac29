//! The command line (clap derive).
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "vggtrain",
    version,
    about = "Train the paper's VGG networks on libtorch, and watch and steer the run from a terminal"
)]
#[command(
    after_help = "Exit codes: 0 done, 1 the run failed, 2 bad input (config, data, checkpoint), 130 stopped by SIGINT, 143 stopped by SIGTERM."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Train a network (TUI on a terminal, headless otherwise or with --no-tui).
    Train(TrainArgs),
    /// Evaluate checkpoints on a split with the paper's test protocol (several: ConvNet fusion).
    Eval(EvalArgs),
    /// Classify image files with trained networks and the paper's test protocol.
    Predict(PredictArgs),
    /// Write a checkpoint's weights alone (torchvision names) to safetensors.
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// The configurations: weight layers, parameters and forward GFLOPs.
    Models {
        #[arg(long, default_value_t = 224)]
        input: i64,
        #[arg(long, default_value_t = 1000)]
        classes: i64,
        #[arg(long, default_value_t = 1)]
        width: i64,
        #[arg(long, default_value_t = 3)]
        channels: i64,
    },
    /// Versions, CUDA, threads and the datasets found.
    Info,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Training throughput: compute only, data only, end to end.
    Bench(BenchCli),
    /// Draw a run's report (loss, accuracy, lr, per-class, confusion) as PNG or SVG; several runs: overlaid.
    Report {
        /// Run directories (live ones too).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The file to write, .png or .svg (default: the first run's report.png).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write an ImageNet-style folder as tar shards (webdataset style) for --dataset shards.
    Pack {
        /// The folder: DIR/train/<class>/ and DIR/val/<class>/.
        #[arg(long)]
        data_dir: PathBuf,
        /// Where the shards go: OUT/train/*.tar, OUT/val/*.tar, OUT/classes.txt.
        #[arg(long)]
        out: PathBuf,
        /// Shrink images so their smallest side is at most N (re-encoded as JPEG, quality 90).
        #[arg(long, value_name = "N")]
        max_side: Option<u32>,
        /// Start a new shard past this many MB.
        #[arg(long, default_value_t = 256)]
        shard_mb: u64,
    },
    /// Write a run's TensorBoard event files from its metrics.jsonl (for runs without them).
    TensorboardExport {
        /// The run directory.
        run: PathBuf,
        /// Where the event files go (default: RUN/tensorboard).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The runs in the runs directory.
    Runs {
        #[arg(long)]
        runs_dir: Option<PathBuf>,
    },
    /// Open the TUI on a run in another process (q detaches, the run goes on).
    Attach {
        /// The run directory (default: the newest live run).
        run: Option<PathBuf>,
        #[arg(long)]
        runs_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the effective configuration and where each value came from.
    Show(ConfigArgs),
}

/// Everything that describes a run's configuration.
#[derive(Args, Debug, Default, Clone)]
pub struct ConfigArgs {
    /// A TOML file (see config/); it states only what differs from the paper.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A, A-LRN, B, C, D, E or vgg11, vgg11-lrn, vgg13, vgg16-c, vgg16, vgg19.
    #[arg(long)]
    pub model: Option<String>,
    /// cifar10, cifar100, mnist, fashion-mnist, folder or shards (tar shards: vggtrain pack).
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<i64>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train on the first N images of the shuffled training set.
    #[arg(long)]
    pub subset: Option<usize>,
    #[arg(long)]
    pub width: Option<i64>,
    /// Download the dataset when it is missing.
    #[arg(long)]
    pub download: bool,
    /// Count and skip undecodable images (folder datasets).
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Any key: --set train.patience=3 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// The flags as "section.key=value" overrides, `--set` last.
    pub fn overrides(&self) -> Vec<String> {
        let q = |s: &str| format!("{s:?}");
        let p = |p: &PathBuf| q(&p.display().to_string());
        let mut o = Vec::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                o.push(format!("{k}={v}"));
            }
        };
        add("model.config", self.model.as_deref().map(q));
        add("data.dataset", self.dataset.as_deref().map(q));
        add("data.dir", self.data_dir.as_ref().map(p));
        add("train.epochs", self.epochs.map(|v| v.to_string()));
        add("train.batch-size", self.batch_size.map(|v| v.to_string()));
        add("train.lr", self.lr.map(|v| format!("{v:e}")));
        add("train.device", self.device.as_deref().map(q));
        add("run.runs-dir", self.runs_dir.as_ref().map(p));
        add("run.name", self.name.as_deref().map(q));
        add("train.seed", self.seed.map(|v| v.to_string()));
        add("data.subset", self.subset.map(|v| v.to_string()));
        add("model.width", self.width.map(|v| v.to_string()));
        add("data.download", self.download.then(|| "true".into()));
        add("data.skip-bad-images", self.skip_bad_images.then(|| "true".into()));
        o.extend(self.set.iter().cloned());
        o
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Headless: progress on stderr, no TUI.
    #[arg(long)]
    pub no_tui: bool,
    /// Headless progress: a live bar (default where stderr is a terminal),
    /// lines (default elsewhere: logs, SLURM) or none.
    #[arg(long, value_enum)]
    pub progress: Option<crate::headless::Progress>,
    /// Continue a run from its newest complete checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Seconds a rank waits for the others (to meet, at a collective)
    /// before it gives up with an error: a lost or hung rank ends the run.
    /// Rank 0's saves are waited for up to 30 minutes, or this if longer.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub dist_timeout: u64,
}

/// The views of the paper's test protocol (§3.2, §4.2-§4.4).
#[derive(Args, Debug, Clone, Default)]
pub struct ViewArgs {
    /// Test scales Q, whose posteriors are averaged (e.g. 256,384,512), or
    /// `paper`: {S-32, S, S+32} for a fixed training scale S, {Smin,
    /// (Smin+Smax)/2, Smax} for a jittered one. Default: the run's test scale.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub scales: Vec<String>,
    /// Dense evaluation: the fully connected layers as convolutions over the whole image.
    #[arg(long)]
    pub dense: bool,
    /// Multi-crop: a 5x5 grid of crops and their mirror images (50 views a scale).
    #[arg(long)]
    pub multi_crop: bool,
    /// Average with the horizontally flipped image (of the centre crop, of the dense image).
    #[arg(long)]
    pub flip: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint; repeated, the models' posteriors are averaged (ConvNet
    /// fusion). The first must be a checkpoint (its run names the data), the
    /// others may be exported weights.
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    #[arg(long, default_value = "test")]
    pub split: String,
    #[command(flatten)]
    pub views: ViewArgs,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub device: Option<String>,
    /// Where the dataset is, if not where the run found it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A checkpoint or exported weights; repeated, the posteriors are averaged.
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    #[command(flatten)]
    pub views: ViewArgs,
    /// The classes shown for each image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// One JSON object a line: image, probs (one per class), top.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub device: Option<String>,
    /// JPEG or PNG files, any size, grey or colour.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchCli {
    #[arg(long, default_value = "D")]
    pub model: String,
    /// Input size (32 = CIFAR shape, 224 = ImageNet crop).
    #[arg(long, default_value_t = 32)]
    pub input: i64,
    #[arg(long, default_value_t = 128)]
    pub batch: i64,
    #[arg(long, default_value_t = 1)]
    pub width: i64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// fp32, bf16 or fp16 (autocast, CUDA only; fp16 with loss scaling).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Memory layout: true (NHWC, the trainer's default) or false (NCHW).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub channels_last: bool,
    /// An ImageNet-style folder (DIR/train/<class>/*.jpg, or DIR/<class>/),
    /// or tar shards (DIR/train/*.tar; `--shards DIR` says the same): its
    /// JPEG pipeline timed per thread count, then end to end (with --input
    /// 224 for the ImageNet crop).
    #[arg(long, value_name = "DIR", visible_alias = "shards")]
    pub folder: Option<std::path::PathBuf>,
    /// The training scale S the folder's images are rescaled to.
    #[arg(long, default_value_t = 256)]
    pub scale: u32,
    /// Decoding threads for the folder's end-to-end run, as data.workers
    /// (0: the default for the device).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Profile the compute-only steps with libtorch's profiler (CPU ops,
    /// and CUDA kernels on a GPU): a Chrome/Perfetto trace to FILE and a
    /// table of the ops that took the time.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<std::path::PathBuf>,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// With ranks: sum the gradients after backward, not while it runs
    /// (to measure what the overlap gains).
    #[arg(long)]
    pub no_overlap: bool,
    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// vggtrain's own launcher of data-parallel ranks (torchrun and SLURM set
/// the same things in the ranks' environment: leave these out under them).
#[derive(Args, Debug, Clone, Default)]
pub struct LaunchArgs {
    /// Start N ranks on this machine, each stepping on its share of the
    /// batch with the gradients summed (one GPU each on CUDA; on the CPU,
    /// the cores split between them).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub nproc_per_node: Option<u16>,
    /// Machines in the run: each runs the same command with its own
    /// --node-rank, and all meet at --master-addr:--master-port.
    #[arg(long, value_name = "M", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub nnodes: u16,
    /// This machine's place among the --nnodes, from 0 (node 0 holds the
    /// run's rank 0, which serves the rendezvous).
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub node_rank: u16,
    /// Node 0's address, reachable from every machine (needed with --nnodes
    /// above 1; default 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub master_addr: Option<String>,
    /// Node 0's port for the rendezvous (default 29500 with --nnodes above
    /// 1, else a free one).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub master_port: Option<u16>,
}
