//! Makes the binary find libtorch without LD_LIBRARY_PATH and find CUDA when
//! libtorch has it, and compiles the c10d shim (src/dist/c10d.cpp) against
//! libtorch's headers and gloo's (Debian's libgloo-dev).
use std::{env, fs, path::Path};

/// Where gloo's headers are looked for (ProcessGroupGloo.hpp includes them;
/// the PyTorch wheel lacks them).
const GLOO_INCLUDES: [&str; 2] = ["/usr/include", "/usr/local/include"];

fn c10d_shim(root: &Path) {
    println!("cargo:rerun-if-changed=src/dist/c10d.cpp");
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
    let include = root.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/dist/c10d.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(gloo)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false);
    match nccl_includes(root) {
        Some(dirs) => {
            build.define("USE_C10D_NCCL", None).flag("-Wno-interference-size");
            // c10::cuda::device_count, to make an NCCL group where a GPU is.
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
            for d in dirs {
                build.include(d);
            }
        }
        None => println!(
            "cargo:warning=the c10d shim is built without NCCL (Gloo only, CUDA tensors too): \
             libtorch_cuda, the wheel's nvidia/ headers or .cuda-headers (scripts/setup.sh) are missing"
        ),
    }
    build.compile("vggtrain_c10d");
}

/// The headers ProcessGroupNCCL.hpp needs, where libtorch has CUDA: the
/// wheel's CUDA runtime and NCCL (its nvidia/ folder, beside torch/), and
/// CUDA's CCCL and crt headers that the wheel lacks (.cuda-headers, which
/// scripts/setup.sh installs). None when any is missing.
fn nccl_includes(root: &Path) -> Option<Vec<std::path::PathBuf>> {
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
    c10d_shim(root);
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
