//! Running the built `llamagen-eval` binary: [`cli`] builds one invocation (a [`Cli`] of the
//! support crate, which starts every process of the tests), [`Run`] is its outcome; the launches
//! of several ranks ([`ranks`], [`torchrun`]); the golden tiny generator's flags ([`tiny_gpt`],
//! [`tiny_t2i`]); the fixtures the tests share.

use std::path::{Path, PathBuf};
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use llamagen_test_support as support;
pub use support::{array_vars, srun_vars, Cli, LauncherVars, Measured, Run};

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_llamagen-eval")
}

/// One invocation of the binary under test, without the machine's launcher variables and the
/// developer's Inception weights (see [`Cli`]).
pub fn cli() -> Cli {
    Cli::new(binary())
}

/// The binary run by `sh -c script sh BINARY ARGS` (the script sets limits, then `exec "$@"`).
pub fn cli_in_shell(script: &str) -> Cli {
    Cli::in_shell(binary(), script)
}

/// The binary launched by the real `torchrun` with `nproc` ranks and `max_restarts` restarts,
/// each rank through `sh -c script` when one is given.
pub fn torchrun(nproc: usize, max_restarts: u32, script: Option<&str>) -> Cli {
    Cli::torchrun(binary(), nproc, max_restarts, script)
}

/// The binary with `args` once per entry of `vars` (each rank with its own launcher variables
/// and one thread), all at once; their runs by rank.
pub fn ranks<S: AsRef<std::ffi::OsStr>>(args: &[S], vars: &[LauncherVars]) -> Vec<Run> {
    support::run_together(vars.iter().map(|v| cli().args(args).rank(v)).collect())
}

/// The variables of all `size` tasks of one `srun`.
pub fn srun_tasks(size: usize) -> Vec<LauncherVars> {
    (0..size).map(|rank| srun_vars(rank, size)).collect()
}

/// Panics unless every run succeeded.
#[track_caller]
pub fn all_succeed(runs: Vec<Run>) {
    for (rank, run) in runs.into_iter().enumerate() {
        assert!(run.succeeded(), "rank {rank}: {run:?}");
    }
}

/// A golden file's path as a `&'static str` (kept for the whole test process).
fn golden_str(name: &'static str) -> &'static str {
    static PATHS: OnceLock<std::sync::Mutex<Vec<(&'static str, &'static str)>>> = OnceLock::new();
    let mut paths = PATHS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some((_, path)) = paths.iter().find(|(n, _)| *n == name) {
        return path;
    }
    let path: &'static str = Box::leak(s(&golden(name)).to_owned().into_boxed_str());
    paths.push((name, path));
    path
}

/// `command` on a golden generator (`gpt`) with the golden tokenizer, at 64 px on the CPU with 4
/// heads: the command line every tiny-GPT run starts with. Extend it with the run's own flags.
pub fn generator(command: &'static str, gpt: &'static str) -> Vec<&'static str> {
    vec![
        command,
        "--gpt",
        golden_str(gpt),
        "--vq",
        golden_str("vq_public.pt"),
        "--n-head",
        "4",
        "--image-size",
        "64",
        "--device",
        "cpu",
    ]
}

/// `command` on the golden class-conditional generator `gpt_public.pt` (see [`generator`]).
pub fn tiny_gpt(command: &'static str) -> Vec<&'static str> {
    generator(command, "gpt_public.pt")
}

/// `command` on the golden text-to-image generator `gpt_t2i_public.pt` (see [`generator`]).
pub fn tiny_t2i(command: &'static str) -> Vec<&'static str> {
    generator(command, "gpt_t2i_public.pt")
}

/// `fid` on the tiny class-conditional generator with seed 5: `samples` images at guidance `cfg`,
/// generated `gen_batch_size` at a time, scored 4 at a time against `reference` with the
/// Inception `weights` (KID over 5 subsets of 5), saved as `out/samples.npz`, the result in `out`.
pub fn tiny_gpt_fid_with_kid(
    (samples, cfg, gen_batch_size): (&str, &str, &str),
    (reference, weights): (&Path, &Path),
    out: &Path,
) -> Vec<String> {
    let saved = out.join("samples.npz");
    let mut args = tiny_gpt("fid");
    args.extend([
        "--samples",
        samples,
        "--cfg-scale",
        cfg,
        "--seed",
        "5",
        "--gen-batch-size",
        gen_batch_size,
        "--feature-batch-size",
        "4",
        "--kid-subsets",
        "5",
        "--kid-subset-size",
        "5",
        "--save-samples",
        s(&saved),
        "--out",
        s(out),
    ]);
    args.extend(scored_against(reference, weights));
    strings(&args)
}

/// Sets the value of `flag` in `args` (a command line with `flag VALUE` in it).
#[track_caller]
pub fn set_flag<'a>(args: &mut [&'a str], flag: &str, value: &'a str) {
    let at = args
        .iter()
        .position(|a| *a == flag)
        .expect("the flag is there");
    args[at + 1] = value;
}

/// Removes `flag` and its value from `args`.
#[track_caller]
pub fn remove_flag(args: &mut Vec<&str>, flag: &str) {
    let at = args
        .iter()
        .position(|a| *a == flag)
        .expect("the flag is there");
    args.drain(at..at + 2);
}

/// `args` as owned strings (for argument lists that are extended with built paths).
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// How the tests of this binary share the cores. Oversubscribed cores slow every process down
/// several times over, so a test whose child processes use every core (libtorch, rayon) holds
/// [`all_cores`] and runs alone, while the tests that run theirs single-threaded
/// (`OMP_NUM_THREADS=1`) hold [`one_core`] and may run side by side. Light tests hold neither.
static CORES: RwLock<()> = RwLock::new(());

/// Held by a test whose child processes use every core: no other core-holding test runs meanwhile.
pub fn all_cores() -> RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a test whose child processes run single-threaded: others like it may run meanwhile.
pub fn one_core() -> RwLockReadGuard<'static, ()> {
    CORES.read().unwrap_or_else(PoisonError::into_inner)
}

/// The random Inception weights of the support crate (seeded, FID architecture), made once and
/// kept in this target's test folder (the parity tests' and benchmarks' fixture).
pub fn random_inception_weights() -> PathBuf {
    support::random_inception_weights(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// A fresh [`ScratchDir`] and the [`random_inception_weights`] (kept in the target's test folder).
pub fn scratch_with_random_inception() -> (ScratchDir, PathBuf) {
    (ScratchDir::new(), random_inception_weights())
}

/// Random Inception weights of our own architecture (seeded by tch, uncalibrated, written as
/// `root/inception.safetensors`) and a fixed reference batch of `n_images` 32x32 images
/// (`root/ref.npz`): for the tests that compare runs with one another, not with published
/// numbers. Not [`random_inception_weights`]: those calibrated weights give features (and an
/// FID near 2e5) whose rounding across ranks exceeds the distributed tests' 1e-5 tolerance.
pub fn random_inception_and_reference(root: &Path, n_images: usize) -> (PathBuf, PathBuf) {
    let weights = root.join("inception.safetensors");
    tch::manual_seed(1);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _net = llamagen_eval::models::inception::InceptionV3::new(&vs.root());
    let vars = vs.variables();
    let named: Vec<(&str, &tch::Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::Tensor::write_safetensors(&named, &weights).unwrap();
    let reference = root.join("ref.npz");
    let images = ndarray::Array4::from_shape_fn((n_images, 32, 32, 3), |(i, y, x, c)| {
        ((x * 7 + y * 3 + i * 31 + c * 50) % 256) as u8
    });
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(&reference).unwrap());
    npz.add_array("arr_0", &images).unwrap();
    npz.finish().unwrap();
    (weights, reference)
}

/// A fresh scratch folder, removed when dropped; it derefs to its path.
pub struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    pub fn new() -> Self {
        ScratchDir(tempfile::tempdir().unwrap())
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

/// A fresh [`ScratchDir`] holding [`random_inception_and_reference`] of `n_images` images: the
/// folder, the weights and the reference batch.
pub fn scratch_with_inception(n_images: usize) -> (ScratchDir, PathBuf, PathBuf) {
    let dir = ScratchDir::new();
    let (weights, reference) = random_inception_and_reference(&dir, n_images);
    (dir, weights, reference)
}

/// [`scratch_with_inception`] by name, for the tests that pass it around.
pub struct Scratch {
    pub root: ScratchDir,
    pub weights: PathBuf,
    pub reference: PathBuf,
}

impl Scratch {
    pub fn new(n_images: usize) -> Self {
        let (root, weights, reference) = scratch_with_inception(n_images);
        Scratch {
            root,
            weights,
            reference,
        }
    }
}

/// The flags that run the Inception `weights` on the CPU.
pub fn inception_on_cpu(weights: &Path) -> [&str; 4] {
    ["--inception", s(weights), "--device", "cpu"]
}

/// The flags that score images against the `reference` batch (or statistics) with the Inception
/// `weights`.
pub fn scored_against<'a>(reference: &'a Path, weights: &'a Path) -> [&'a str; 4] {
    ["--ref", s(reference), "--inception", s(weights)]
}

/// numpy's npy v1 header for `descr` and `shape`, padded to 64 bytes, for hand-made npz files.
pub fn npy_header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((dict.len() as u16).to_le_bytes());
    npy.extend(dict.as_bytes());
    npy
}

/// `dir/metrics.json`, parsed.
pub fn metrics_json(dir: &Path) -> serde_json::Value {
    let path = dir.join("metrics.json");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", path.display()));
    serde_json::from_reader(file).unwrap()
}

/// A path as the `&str` argument vectors are built of (temporary paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

pub use support::golden;

/// The sha256 of `path` in hex.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Two real `metrics --metrics fid --bootstrap 10` runs of the golden sample features
/// (`root/sample.npz`) into `root/run-a` and `root/run-b`: against all 1,500 golden reference
/// rows (`root/ref-a.npz`) and against the first 1,000 (`root/ref-b.npz`), that is against
/// different references. Returns (run folder, reference file) of each.
pub fn runs_against_two_references(root: &Path) -> [(PathBuf, PathBuf); 2] {
    let mut golden_npz =
        ndarray_npy::NpzReader::new(std::fs::File::open(golden("metrics_public.npz")).unwrap())
            .unwrap();
    let mut array = |key: &str| -> ndarray::Array2<f32> { golden_npz.by_name(key).unwrap() };
    let (sample, reference) = (array("sample"), array("ref"));
    let write = |name: &str, pool: ndarray::ArrayView2<f32>| {
        let path = root.join(name);
        let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(&path).unwrap());
        npz.add_array("pool", &pool).unwrap();
        npz.finish().unwrap();
        path
    };
    let sample = write("sample.npz", sample.view());
    let references = [
        write("ref-a.npz", reference.view()),
        write("ref-b.npz", reference.slice(ndarray::s![..1000, ..])),
    ];
    references.map(|reference| {
        let name = if reference.ends_with("ref-a.npz") {
            "run-a"
        } else {
            "run-b"
        };
        let out = root.join(name);
        cli()
            .args(["metrics", "--sample-features", s(&sample), "--ref-features"])
            .arg(&reference)
            .args(["--metrics", "fid", "--bootstrap", "10", "--out", s(&out)])
            .quiet()
            .run()
            .success();
        (out, reference)
    })
}

/// The binary with `args`, info logs, and one libtorch thread (the tests run side by side, and
/// one thread per process avoids oversubscription).
pub fn llamagen_eval(args: &[&str]) -> Run {
    cli().args(args).info_log().one_thread().run()
}
