//! Makes the binaries find libtorch without LD_LIBRARY_PATH: torch-sys tells us where the libtorch
//! it compiled against lives (the project venv's `torch/lib`), and we bake that directory into the
//! rpath. On wheels that carry CUDA, `torch_cuda` is linked with `--no-as-needed`, since nothing
//! references its symbols directly and the linker would otherwise drop it (and CUDA with it).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        panic!(
            "\n\ntorch-sys did not report where libtorch is. Run `./x setup` from the project root \
             (it creates .venv with torch==2.13.0) and build through `./x build`, which sets \
             LIBTORCH_USE_PYTORCH=1 against that venv.\n\n"
        );
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
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
