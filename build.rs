//! Makes the binaries find libtorch without LD_LIBRARY_PATH: torch-sys tells us where the libtorch
//! it compiled against lives (the project venv's `torch/lib`), and we bake that directory into the
//! rpath. `torch_cuda` is not linked: on wheels that carry CUDA it is loaded at run time, only by
//! commands that may use a GPU (`device::load_cuda`), because loading it costs about 400 MB of
//! resident memory and half a second, which `metrics`, `report` and `check` never need.
//!
//! It also compiles `src/shim/context.cpp`, a few C functions over ATen's global context that
//! tch does not expose (the TF32 switches behind `--tf32`), against the same libtorch headers.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=src/shim/context.cpp");
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        panic!(
            "\n\ntorch-sys did not report where libtorch is. Run `./x setup` from the project root \
             (it creates .venv with torch==2.13.0) and build through `./x build`, which sets \
             LIBTORCH_USE_PYTORCH=1 against that venv.\n\n"
        );
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(lib_dir.join("../include"))
        // The PyPI wheels are built with the C++11 ABI; the shim must agree to link.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .file("src/shim/context.cpp")
        .compile("llamagen_shim");
    let version = std::fs::read_to_string(lib_dir.join("../version.py"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches(['\'', '"']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LLAMAGEN_LIBTORCH_VERSION={version}");
    println!(
        "cargo:rustc-env=LLAMAGEN_LIBTORCH_LIB={}",
        lib_dir.display()
    );
}
