//! Makes the binary find libtorch without LD_LIBRARY_PATH and find CUDA when
//! libtorch has it.
use std::{env, fs, path::Path};

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
