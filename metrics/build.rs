//! Fails early, with the setup step to run, when the system OpenBLAS/LAPACK is missing:
//! otherwise the first sign would be an obscure linker error much later.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if pkg_config::Config::new()
        .cargo_metadata(false)
        .probe("openblas")
        .is_err()
    {
        panic!(
            "\n\nllamagen-metrics needs the system OpenBLAS (with LAPACK), which was not found via pkg-config.\n\
             Run `./x setup` from the project root (it installs the Debian packages `libopenblas-dev`,\n\
             `liblapacke-dev` and `pkg-config`), or install them yourself, then build again.\n\n"
        );
    }
}
