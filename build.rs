//! Makes the binary find libtorch without LD_LIBRARY_PATH and find CUDA when
//! libtorch has it, and compiles the two shims against libtorch's headers:
//! the training step's (src/native/native.cpp, with CUDA's headers where
//! libtorch has CUDA) and c10d's (src/dist/c10d.cpp, with gloo's headers
//! from Debian's libgloo-dev, and NCCL where libtorch has CUDA).
use std::{
    env, fs,
    path::{Path, PathBuf},
};

/// Where gloo's headers are looked for (ProcessGroupGloo.hpp includes them;
/// the PyTorch wheel lacks them).
const GLOO_INCLUDES: [&str; 2] = ["/usr/include", "/usr/local/include"];

/// A C++ build against libtorch's headers, with CUDA's (`cuda`) where found.
fn shim(root: &Path, file: &str, cuda: Option<&[PathBuf]>) -> cc::Build {
    println!("cargo:rerun-if-changed={file}");
    let include = root.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(file)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false);
    if let Some(dirs) = cuda {
        build.flag("-Wno-interference-size");
        for d in dirs {
            build.include(d);
        }
    }
    build
}

/// The training step's shim: with CUDA, the jiterator's one-pass kernels
/// and the CUDA allocator's statistics.
fn native_shim(root: &Path, cuda: Option<&[PathBuf]>) {
    println!("cargo:rerun-if-changed=src/native/guard.hpp");
    let mut build = shim(root, "src/native/native.cpp", cuda);
    if cuda.is_some() {
        build.define("VGG_CUDA", None);
    }
    build.compile("vggtrain_native");
}

fn c10d_shim(root: &Path, cuda: Option<&[PathBuf]>) {
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    let gloo = env::var("GLOO_INCLUDE_DIR")
        .map(|d| vec![d])
        .unwrap_or_else(|_| GLOO_INCLUDES.map(str::to_owned).to_vec());
    let Some(gloo) = gloo.iter().find(|d| Path::new(d).join("gloo/algorithm.h").is_file()) else {
        panic!(
            "gloo's headers (gloo/algorithm.h) are not in {}: install Debian's libgloo-dev \
             (scripts/setup.sh does; or apt-get install libgloo-dev), or set GLOO_INCLUDE_DIR",
            gloo.join(", ")
        );
    };
    let mut build = shim(root, "src/dist/c10d.cpp", cuda);
    build.include(gloo).define("USE_C10D_GLOO", None);
    if cuda.is_some() {
        build.define("USE_C10D_NCCL", None);
    }
    build.compile("vggtrain_c10d");
}

/// The CUDA headers the shims need (ProcessGroupNCCL.hpp, the jiterator,
/// the CUDA allocator), where libtorch has CUDA: the wheel's CUDA runtime
/// and NCCL (its nvidia/ folder, beside torch/), and CUDA's CCCL and crt
/// headers that the wheel lacks (.cuda-headers, which scripts/setup.sh
/// installs). None when any is missing.
fn cuda_includes(root: &Path) -> Option<Vec<PathBuf>> {
    println!("cargo:rerun-if-changed=.cuda-headers");
    // .libtorch is a link into the wheel's folder.
    let root = root.canonicalize().ok()?;
    let site = root.parent()?;
    let extra = Path::new(".cuda-headers/nvidia/cu13/include").canonicalize().ok()?;
    let dirs = vec![
        site.join("nvidia/cu13/include"),
        extra.clone(),
        extra.join("cccl"),
        site.join("nvidia/nccl/include"),
    ];
    let found = root.join("lib/libtorch_cuda.so").is_file()
        && dirs[0].join("cuda_runtime_api.h").is_file()
        && extra.join("crt/host_config.h").is_file()
        && extra.join("cccl/nv/target").is_file()
        && dirs[3].join("nccl.h").is_file();
    found.then_some(dirs)
}

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = Path::new(&lib);
    // An rpath to libtorch's lib folder: the binary runs without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // tch's known pitfall: the linker drops libtorch_cuda.so because no symbol
    // of it is referenced directly, and CUDA is then never found at run time.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // The libtorch version, for `vggtrain info`: a pip install has version.py
    // beside lib/, a standalone libtorch has build-version.
    let root = lib.parent().unwrap_or(lib);
    let cuda = cuda_includes(root);
    match &cuda {
        // c10::cuda::device_count and the CUDA allocator's statistics.
        Some(_) => println!("cargo:rustc-link-lib=dylib=c10_cuda"),
        None => println!(
            "cargo:warning=the shims are built without CUDA (no NCCL, no one-pass CUDA kernels): \
             libtorch_cuda, the wheel's nvidia/ headers or .cuda-headers (scripts/setup.sh) are missing"
        ),
    }
    native_shim(root, cuda.as_deref());
    c10d_shim(root, cuda.as_deref());
    let version = fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').to_owned())
        })
        .or_else(|| fs::read_to_string(root.join("build-version")).ok())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VGGTRAIN_LIBTORCH_VERSION={}", version.trim());
}
