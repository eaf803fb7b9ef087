//! A seeded fuzzer for the input readers: checkpoints (pickle, zip, legacy and safetensors, through
//! `Checkpoint`) and the npz images and npy headers of `data::npz`. Each input is a corpus file
//! mutated (the golden checkpoints, safetensors and npz files; the checkpoints
//! tests/python/fixtures/make_checkpoints.py writes with torch in every format) or a structure
//! synthesised to be valid but hostile (memoised strings and containers referenced thousands of
//! times, deep nesting, copied call arguments, storages of impossible or unknown types and sizes,
//! views reaching past their storage, entries holding more or less than claimed, a deflated storage
//! far larger than its view, safetensors and npy headers with absurd shapes and offsets), itself
//! mutated half the time. Every reader must return, an error being fine, without a panic and within
//! [`SLOW`]; checkpoints are read under a [`ReadBudget`] of [`BUDGET`] bytes.
//!
//! The files a run keeps between processes are fuzzed the same way, from valid ones made here with
//! one file mutated (bytes, or a JSON value replaced by a hostile count, range, name or null, or
//! removed): a resume journal (`settings.json`, `progress.json`, the record streams; resumed, then
//! every record read back), a sealed feature cache entry (`FeatureSet::load` and `load_sealed`),
//! and a two-rank job's parts folder (manifests and part files, gathered as `merge OUT_DIR` does,
//! then joined). What their checksums protect is asserted: a resumed journal's records, a sealed
//! entry's arrays and the joined parts' features must be the ones written, else the input fails.
//!
//! The inputs run in a child process (this test binary re-run on this test alone) whose peak
//! resident memory, from its own rusage, must stay below [`MAX_RSS`]: the budgets must hold in
//! fact, not only as counted. Inside `./x test` it runs at least [`MIN_RUNS`] inputs and then until
//! `LLAMAGEN_FUZZ_SECONDS` (default 12) have passed; `./x fuzz` runs it for longer.
//! `LLAMAGEN_FUZZ_SEED` starts the seeds elsewhere and `LLAMAGEN_FUZZ_RUNS` sets the minimum, so
//! `LLAMAGEN_FUZZ_SEED=S LLAMAGEN_FUZZ_RUNS=1 LLAMAGEN_FUZZ_SECONDS=0` replays seed S. Failing
//! inputs are kept in the test folder (`fuzz-failures/`) as reproducers.
//!
//! Beside the fuzzing, a few synthesised hostile checkpoints are checked exactly: what a budget
//! admits and refuses, and the messages.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llamagen_eval::checkpoint::{Checkpoint, ErrorKind, ReadBudget};
use llamagen_eval::data::npz::{read_npy_header, validate_image_header, NpzImages};
use llamagen_eval::data::ImageSource;
use llamagen_eval::dist::manifest::write_manifest;
use llamagen_eval::dist::{parts_in, Manifest, RankRecord};
use llamagen_eval::feature_set::{sha256_file, FeatureSet};
use llamagen_eval::journal::{Journal, StreamSpec};
use llamagen_eval::layout::RunLayout;
use llamagen_eval::progress::Progress;
use llamagen_test_support as support;
use ndarray::Array2;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use crate::harness::assert_mentions;

/// The memory budget of each checkpoint read.
const BUDGET: u64 = 256 << 20;
/// Peak resident memory of the fuzzing process (libtorch, the corpus, one input, one read).
const MAX_RSS: u64 = 1_000_000_000;
/// Longest one input may take.
const SLOW: Duration = Duration::from_secs(5);
/// Inputs run whatever the time: the same seeds on every machine.
const MIN_RUNS: u64 = 300;
/// Seconds of fuzzing in all (more when the minimum takes longer), unless `LLAMAGEN_FUZZ_SECONDS`
/// says otherwise.
const DEFAULT_SECONDS: u64 = 12;
/// Set in the child process, which does the fuzzing.
const CHILD_ENV: &str = "LLAMAGEN_FUZZ_CHILD";
const TEST_NAME: &str = "fuzz_readers::readers_survive_hostile_and_mutated_inputs";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn readers_survive_hostile_and_mutated_inputs() {
    if std::env::var_os(CHILD_ENV).is_some() {
        fuzz();
        return;
    }
    // This test binary again, on this test alone, measured: its own peak memory from wait4.
    let measured = support::Cli::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .run_measured();
    let run = &measured.run;
    let output = run.stdout_text() + &run.stderr_text();
    assert!(run.succeeded(), "the fuzzing process failed:\n{output}");
    let max_rss = measured.peak_rss;
    eprintln!(
        "{output}fuzzing process peaked at {} MB",
        max_rss / 1_000_000
    );
    assert!(
        max_rss < MAX_RSS,
        "the fuzzing process peaked at {} MB",
        max_rss / 1_000_000
    );
}

/// splitmix64: a small seeded generator, so failures reproduce from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Mostly small numbers, sometimes sizes that overflow or exhaust memory.
    fn size(&mut self) -> i64 {
        match self.below(8) {
            0 => 0,
            1..=4 => self.below(64) as i64,
            5 => self.below(1 << 20) as i64,
            _ => *self.pick(&[1 << 31, 1 << 40, 1 << 62, i64::MAX, (1 << 32) - 1]),
        }
    }
}

/// A position, mostly in the parts that describe the data (pickles, zip local headers and npy
/// headers at the start, the zip central directory at the end).
fn position(rng: &mut Rng, len: usize) -> usize {
    match rng.below(10) {
        0..=3 => rng.below(len.min(32 * 1024)),
        4..=6 => len.saturating_sub(1 + rng.below(len.min(8 * 1024))),
        _ => rng.below(len),
    }
}

/// Byte-level damage: flipped bits, special bytes, cuts, insertions, deletions, and integers that
/// are sizes in some format (zip fields, pickle lengths, safetensors' header length).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if data.is_empty() {
            return;
        }
        let at = position(rng, data.len());
        match rng.below(7) {
            0 | 1 => data[at] ^= 1 << rng.below(8),
            2 => data[at] = *rng.pick(&[0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe]),
            3 => data.truncate(at),
            4 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            5 => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                data.drain(at..end);
            }
            _ => {
                let value: u64 = *rng.pick(&[
                    0,
                    1,
                    0x7fff_ffff,
                    0xffff_ffff,
                    1 << 32,
                    1 << 40,
                    1 << 62,
                    u64::MAX,
                    data.len() as u64 + 1,
                ]);
                let width = *rng.pick(&[2usize, 4, 8]);
                let end = (at + width).min(data.len());
                let bytes = value.to_le_bytes();
                data[at..end].copy_from_slice(&bytes[..end - at]);
            }
        }
    }
}

/// Pickle opcodes (protocol 2), for the synthesised inputs.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }

    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn int(&mut self, v: i64) -> &mut Self {
        if let Ok(small) = i32::try_from(v) {
            self.op(b"J").op(&small.to_le_bytes())
        } else {
            self.op(&[0x8a, 8]).op(&v.to_le_bytes())
        }
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }

    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b"c")
            .op(module.as_bytes())
            .op(b"\n")
            .op(name.as_bytes())
            .op(b"\n")
    }

    fn put(&mut self, index: u32) -> &mut Self {
        self.op(b"r").op(&index.to_le_bytes())
    }

    fn get(&mut self, index: u32) -> &mut Self {
        self.op(b"j").op(&index.to_le_bytes())
    }

    fn ints(&mut self, values: &[i64]) -> &mut Self {
        self.op(b"(");
        for &v in values {
            self.int(v);
        }
        self.op(b"t")
    }

    /// `_rebuild_tensor_v2(storage(class, key, numel), offset, shape, stride, False, {})`.
    fn tensor(&mut self, class: (&str, &str), key: &str, numel: i64, view: &View) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
        self.str("storage")
            .global(class.0, class.1)
            .str(key)
            .str("cpu");
        self.int(numel).op(b"tQ").int(view.offset);
        self.ints(&view.shape).ints(&view.stride).op(&[0x89]);
        self.global("collections", "OrderedDict").op(b")RtR")
    }

    fn finish(&mut self) -> Vec<u8> {
        self.op(b".");
        std::mem::take(&mut self.0)
    }
}

/// A tensor view of a storage, in elements.
struct View {
    offset: i64,
    shape: Vec<i64>,
    stride: Vec<i64>,
}

impl View {
    fn contiguous(n: i64) -> Self {
        View {
            offset: 0,
            shape: vec![n],
            stride: vec![1],
        }
    }

    /// A view that usually fits a storage of `numel` elements, sometimes reaches past it.
    fn random(rng: &mut Rng, numel: i64) -> Self {
        let dims = rng.below(4);
        let mut shape: Vec<i64> = (0..dims).map(|_| 1 + rng.below(8) as i64).collect();
        let mut stride = vec![0i64; dims];
        let mut step = 1i64;
        for (s, &d) in stride.iter_mut().zip(&shape).rev() {
            *s = step;
            step = step.saturating_mul(d);
        }
        let mut offset = if numel > step {
            rng.below((numel - step).min(1 << 20) as usize + 1) as i64
        } else {
            0
        };
        if rng.chance(6) {
            match rng.below(3) {
                0 => offset = rng.size(),
                1 if dims > 0 => shape[0] = rng.size(),
                _ if dims > 0 => stride[0] = rng.size(),
                _ => shape.push(rng.size()),
            }
        }
        stride.resize(shape.len(), 1);
        View {
            offset,
            shape,
            stride,
        }
    }
}

/// Storage classes a pickle may name: typed, quantized, foreign.
const STORAGE_CLASSES: [(&str, &str, i64); 8] = [
    ("torch", "FloatStorage", 4),
    ("torch", "LongStorage", 8),
    ("torch", "HalfStorage", 2),
    ("torch", "BFloat16Storage", 2),
    ("torch", "BoolStorage", 1),
    ("torch", "ComplexDoubleStorage", 16),
    ("torch", "QInt8Storage", 1),
    ("evil", "Storage", 4),
];

/// A checkpoint's object and storages: `(key, bytes in the file, element size)`.
struct Synth {
    pickle: Vec<u8>,
    storages: Vec<(String, Vec<u8>, usize)>,
}

/// `{"model": {"t0": tensor, ...}, "steps": 1}` with random storages, views and data lengths.
fn synth_tensors(rng: &mut Rng) -> Synth {
    let mut p = Pickle::new();
    let mut storages = Vec::new();
    p.op(b"}(").str("model").op(b"}(");
    for i in 0..1 + rng.below(4) {
        let (module, class, elem) = *rng.pick(&STORAGE_CLASSES);
        let fits = !rng.chance(8);
        let numel = if fits {
            1 + rng.below(256) as i64
        } else {
            rng.size()
        };
        let key = if rng.chance(3) && i > 0 {
            "0".to_owned()
        } else {
            i.to_string()
        };
        let view = View::random(rng, numel);
        p.str(&format!("t{i}"))
            .tensor((module, class), &key, numel, &view);
        let bytes = usize::try_from(numel.saturating_mul(elem))
            .unwrap_or(usize::MAX)
            .min(1 << 16);
        let bytes = match rng.below(12) {
            0 => bytes / 2,
            1 => bytes + 7,
            _ => bytes,
        };
        if !storages.iter().any(|(k, _, _)| *k == key) {
            let data = (0..bytes).map(|j| (j * 31) as u8).collect();
            storages.push((key, data, elem as usize));
        }
    }
    p.op(b"u").str("steps").int(1).op(b"u");
    Synth {
        pickle: p.finish(),
        storages,
    }
}

/// Memoised values referenced many times: strings (shared by the reader), containers and call
/// arguments (copied, so charged), and one key set over and over.
fn synth_amplified(rng: &mut Rng) -> Synth {
    let mut p = Pickle::new();
    p.op(b"}(").str("model").op(b"}(").str("w");
    p.tensor(("torch", "FloatStorage"), "0", 4, &View::contiguous(4));
    p.op(b"u").str("notes").op(b"](");
    let refs = 1 + rng.below(20_000) as u32;
    match rng.below(4) {
        0 => {
            let len = 1 + rng.below(1 << 20);
            p.op(&[0x8d]).op(&(len as u64).to_le_bytes());
            p.op(&vec![b'x'; len]).put(0);
            for _ in 0..refs {
                p.get(0);
            }
        }
        1 => {
            let items: Vec<i64> = (0..rng.below(5000) as i64).collect();
            p.ints(&items).put(0);
            for _ in 0..refs {
                p.get(0);
            }
        }
        2 => {
            let items: Vec<i64> = (0..rng.below(5000) as i64).collect();
            p.global("builtins", "list")
                .put(1)
                .ints(&items)
                .op(&[0x85])
                .put(0);
            p.op(b"0");
            for _ in 0..refs {
                p.get(1).get(0).op(b"R");
            }
        }
        _ => {
            // A dict whose one long key is set again and again.
            let len = 1 + rng.below(1 << 20);
            p.op(b"}").op(&[0x8d]).op(&(len as u64).to_le_bytes());
            p.op(&vec![b'k'; len]).put(0).int(1).op(b"s");
            for _ in 0..refs {
                p.get(0).int(2).op(b"s");
            }
        }
    }
    p.op(b"eu");
    // `args`, a Namespace whose one long field name is set again and again, on its state dict or
    // (as SETITEM allows) on the object itself.
    p.str("args").global("argparse", "Namespace").op(b")\x81");
    let on_object = rng.chance(2);
    if !on_object {
        p.op(b"}");
    }
    p.op(&[0x8d]).op(&((1u64 << 16) + 3).to_le_bytes());
    p.op(&vec![b'a'; (1 << 16) + 3]).put(1).int(1).op(b"s");
    for _ in 0..refs {
        p.get(1).int(2).op(b"s");
    }
    if !on_object {
        p.op(b"b");
    }
    p.op(b"s");
    // Mostly within the reader's 256 levels.
    let depth = rng.below(300);
    p.str("deep");
    for _ in 0..depth {
        p.op(b"](");
    }
    for _ in 0..depth {
        p.op(b"e");
    }
    if depth == 0 {
        p.op(b"N");
    }
    p.op(b"s");
    Synth {
        pickle: p.finish(),
        storages: vec![("0".to_owned(), vec![0; 16], 4)],
    }
}

fn zip_options(deflate: bool) -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(if deflate {
        CompressionMethod::Deflated
    } else {
        CompressionMethod::Stored
    })
}

/// A zip archive of `(name, bytes, deflated)`.
fn zip_of(entries: &[(String, &[u8], bool)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes, deflate) in entries {
        zip.start_file(name.as_str(), zip_options(*deflate))
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// `synth` as a torch.save zip archive, entries deflated when `deflate`.
fn plain_zip(synth: &Synth, deflate: bool) -> Vec<u8> {
    let mut entries = vec![("archive/data.pkl".to_owned(), &synth.pickle[..], deflate)];
    for (key, bytes, _) in &synth.storages {
        entries.push((format!("archive/data/{key}"), &bytes[..], deflate));
    }
    zip_of(&entries)
}

/// `synth` as a torch.save zip archive, deflated or not, big-endian or not, sometimes without a
/// storage entry.
fn zip_checkpoint(rng: &mut Rng, synth: &Synth) -> Vec<u8> {
    let deflate = rng.chance(3);
    let byteorder: &[u8] = if rng.chance(5) { b"big" } else { b"little" };
    let mut entries = vec![
        ("archive/data.pkl".to_owned(), &synth.pickle[..], deflate),
        ("archive/byteorder".to_owned(), byteorder, false),
    ];
    for (key, bytes, _) in &synth.storages {
        if !rng.chance(20) {
            entries.push((format!("archive/data/{key}"), &bytes[..], deflate));
        }
    }
    zip_of(&entries)
}

/// `synth` in torch.save's legacy format: five pickles, then each storage's count and bytes.
fn legacy_checkpoint(rng: &mut Rng, synth: &Synth) -> Vec<u8> {
    let magic = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let mut out = Pickle::new().op(&[0x8a, 10]).op(&magic).finish();
    out.extend(Pickle::new().int(1001).finish());
    out.extend(Pickle::new().op(b"}").finish());
    out.extend_from_slice(&synth.pickle);
    let mut keys = Pickle::new();
    keys.op(b"](");
    for (key, _, _) in &synth.storages {
        keys.str(key);
    }
    out.extend(keys.op(b"e").finish());
    for (_, bytes, elem) in &synth.storages {
        // The count is in elements; sometimes of the wrong size.
        let elem = if rng.chance(6) {
            *rng.pick(&[1, 2, 4, 8])
        } else {
            *elem
        };
        let count = (bytes.len() / elem) as u64;
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// A safetensors file with random dtypes, shapes and offsets, of which some fit their data.
fn synth_safetensors(rng: &mut Rng) -> Vec<u8> {
    let dtypes = [
        ("F32", 4),
        ("F16", 2),
        ("BF16", 2),
        ("I64", 8),
        ("U8", 1),
        ("BOOL", 1),
        ("U16", 2),
        ("F8_E4M3", 1),
        ("Q4", 1),
    ];
    let mut fields = Vec::new();
    let mut offset = 0u64;
    for i in 0..rng.below(6) {
        let (dtype, size) = *rng.pick(&dtypes);
        let shape: Vec<u64> = (0..rng.below(4)).map(|_| rng.size() as u64 % 9).collect();
        let mut shape_text: Vec<String> = shape.iter().map(u64::to_string).collect();
        let mut bytes = shape.iter().product::<u64>() * size;
        if rng.chance(6) {
            shape_text.push(rng.size().to_string());
            bytes = rng.size() as u64;
        }
        let start = if rng.chance(8) {
            rng.size() as u64
        } else {
            offset
        };
        let end = start.saturating_add(bytes);
        offset = end;
        fields.push(format!(
            "\"t{i}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{start},{end}]}}",
            shape_text.join(",")
        ));
    }
    if rng.chance(3) {
        fields.push("\"__metadata__\":{\"format\":\"pt\"}".to_owned());
    }
    let header = format!("{{{}}}", fields.join(","));
    let data_len = match rng.below(5) {
        0 => offset.saturating_sub(1),
        1 => offset + 3,
        _ => offset,
    }
    .min(1 << 20);
    let claimed = if rng.chance(8) {
        rng.size() as u64
    } else {
        header.len() as u64
    };
    let mut out = claimed.to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len as usize, 0x3c);
    out
}

/// An npy header with a random dtype, order and shape (up to 10^9 images), a little data.
fn synth_npy(rng: &mut Rng) -> Vec<u8> {
    let descr = *rng.pick(&["|u1", "<u1", "<f4", "|b1", "'|u1'"]);
    let fortran = if rng.chance(6) { "True" } else { "False" };
    let mut shape: Vec<u64> = vec![
        *rng.pick(&[0, 1, 2, 4, 1_000_000_000]),
        1 + rng.below(16) as u64,
        1 + rng.below(16) as u64,
        *rng.pick(&[1, 3, 4]),
    ];
    shape.truncate(1 + rng.below(5));
    let shape: Vec<String> = shape.iter().map(u64::to_string).collect();
    let mut dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': ({}), }}",
        shape.join(", ")
    );
    if rng.chance(5) {
        dict = format!("{{'note': \"'descr': '<f8'\", {}", &dict[1..]);
    }
    while (dict.len() + 11) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend((0..rng.below(4096)).map(|i| i as u8));
    out
}

/// An npz holding `npy` as `arr_0.npy`.
fn npz_of(rng: &mut Rng, npy: &[u8]) -> Vec<u8> {
    zip_of(&[("arr_0.npy".to_owned(), npy, rng.chance(2))])
}

/// Elements of the storage of [`deflate_bomb`]: 64 MiB of float32 zeros.
const BOMB_NUMEL: i64 = 16 << 20;

/// A zip checkpoint whose deflated storage is [`BOMB_NUMEL`] zeros, of which its tensor `head`
/// views the first `view`: reading it must inflate only those.
fn deflate_bomb(view: i64) -> Vec<u8> {
    let mut p = Pickle::new();
    p.op(b"}(").str("model").op(b"}(").str("head");
    p.tensor(
        ("torch", "FloatStorage"),
        "0",
        BOMB_NUMEL,
        &View::contiguous(view),
    );
    p.op(b"uu");
    let synth = Synth {
        pickle: p.finish(),
        storages: vec![("0".to_owned(), vec![0; BOMB_NUMEL as usize * 4], 4)],
    };
    let zip = plain_zip(&synth, true);
    assert!(zip.len() < 1 << 20, "the bomb is {} bytes", zip.len());
    zip
}

/// One input: where it came from, its files, and the extension it is read under. A file input is
/// one file named `""` (the input path itself); a folder input (a journal, a run's parts) holds
/// its files by their paths inside the input folder.
struct Input {
    origin: String,
    files: Vec<(String, Vec<u8>)>,
    ext: &'static str,
}

/// A corpus input, weighted by how cheap it is to read.
struct CorpusFile {
    name: String,
    files: Vec<(String, Vec<u8>)>,
    ext: &'static str,
    weight: usize,
}

fn ext_of(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("safetensors") => "safetensors",
        Some("npz") => "npz",
        Some("pth") => "pth",
        _ => "pt",
    }
}

/// The files under `dir`, by their paths inside it.
fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Writes an input at `path`: the file itself, or a folder of its files.
fn write_input(path: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let at = if name.is_empty() {
            path.to_path_buf()
        } else {
            path.join(name)
        };
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, bytes).unwrap();
    }
}

/// The settings, streams and size of the fuzzed journal's run.
const JOURNAL_TOTAL: usize = 64;

fn journal_settings() -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({"cfg_scale": 1.5, "seed": 0})
        .as_object()
        .unwrap()
        .clone()
}

fn journal_streams() -> [StreamSpec; 2] {
    [StreamSpec::new("tokens", 4), StreamSpec::new("features", 8)]
}

/// The records of images `0..n` of a stream of `size`-byte records, as the journal was given them.
fn journal_records(size: usize, n: usize) -> Vec<u8> {
    (0..n * size).map(|j| (j * 13 + size) as u8).collect()
}

/// A journal of three committed batches (six images at sharded indices) and an uncommitted tail.
fn valid_journal(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let path = dir.join("journal");
    let streams = journal_streams();
    let settings = journal_settings();
    let mut journal = Journal::open(&path, &settings, &streams, JOURNAL_TOTAL, false).unwrap();
    let mut done = 0;
    for indices in [&[0u64, 2, 4][..], &[6], &[9, 10]] {
        let records: Vec<Vec<u8>> = streams
            .iter()
            .map(|s| {
                journal_records(s.record_bytes, done + indices.len())[done * s.record_bytes..]
                    .to_vec()
            })
            .collect();
        journal.commit(indices, &records).unwrap();
        done += indices.len();
    }
    drop(journal);
    let mut tail = std::fs::OpenOptions::new()
        .append(true)
        .open(path.join("tokens.bin"))
        .unwrap();
    tail.write_all(&[9; 4]).unwrap();
    read_tree(&path)
}

/// The key, rows and widths of the fuzzed feature cache entry.
const CACHE_KEY: &str = "inception of fuzz images";
const CACHE_WIDTHS: [(&str, Option<usize>); 2] = [("pool", Some(8)), ("logits", Some(5))];

/// Features of samples `0..n`: row i is sample i's, so shards can be checked against the whole.
fn sample_features(n: usize) -> FeatureSet {
    let array =
        |width: usize| Array2::from_shape_fn((n, width), |(i, j)| (i * 31 + j) as f32 * 0.25 - 3.0);
    FeatureSet {
        pool: Some(array(8)),
        logits: Some(array(5)),
        ..FeatureSet::default()
    }
}

const CACHE_ROWS: usize = 6;

/// The world size, samples and settings of the fuzzed launched job.
const PART_RANKS: usize = 2;
const PART_SAMPLES: usize = 8;

/// The parts folder of a two-rank job: each rank's features (with their sample indices) and the
/// manifest naming them with their sha256.
fn valid_parts(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let run = dir.join("run");
    let layout = RunLayout::folder(&run);
    std::fs::create_dir_all(layout.parts()).unwrap();
    let whole = sample_features(PART_SAMPLES);
    for rank in 0..PART_RANKS {
        let indices: Vec<usize> = (rank..PART_SAMPLES).step_by(PART_RANKS).collect();
        let rows =
            |a: &Option<Array2<f32>>| a.as_ref().map(|a| a.select(ndarray::Axis(0), &indices));
        let part = FeatureSet {
            pool: rows(&whole.pool),
            logits: rows(&whole.logits),
            indices: Some(indices.iter().map(|&i| i as i64).collect()),
            ..FeatureSet::default()
        };
        let file = layout.part_file(rank, "features");
        part.save(&file).unwrap();
        let name = RunLayout::part_file_name(rank, "features");
        let manifest = Manifest {
            rank,
            world_size: PART_RANKS,
            launcher: "torchrun".to_owned(),
            shard: format!("{rank}/{PART_RANKS}"),
            samples: PART_SAMPLES,
            settings: journal_settings(),
            run_fields: Default::default(),
            rank_record: RankRecord {
                rank,
                local_rank: rank,
                host: "fuzz".to_owned(),
                device: "cpu".to_owned(),
                device_name: "cpu".to_owned(),
                samples: indices.len(),
                resumed_samples: 0,
                images_per_s: 1.0,
                tokens_per_s: 0.0,
                wall_s: 1.0,
                decode_batch_size: None,
            },
            timing: serde_json::json!({}),
            files: [("features".to_owned(), name)].into(),
            checksums: [("features".to_owned(), sha256_file(&file).unwrap())].into(),
            job: serde_json::json!({"kind": "features"}),
            launch: Some("fuzz".to_owned()),
        };
        write_manifest(&layout, &manifest).unwrap();
    }
    read_tree(&run)
}

fn corpus(generated: &Path) -> Vec<CorpusFile> {
    let golden = support::golden_dir();
    let mut files = Vec::new();
    let single = |bytes: Vec<u8>| vec![(String::new(), bytes)];
    for name in [
        "vq_public.pt",
        "gpt_public.pt",
        "gpt_public_consolidated.pth",
        "gpt_t2i_public.pt",
        "dinov2_tiny_public_pretrain.pth",
        "vq_public_io.safetensors",
        "gpt_public_io.safetensors",
        "gpt_public_bf16_io.safetensors",
        "clip_text_tiny_public.safetensors",
        "clip_vision_tiny_public.safetensors",
        "t5_tiny_public.safetensors",
        "t2i_public_io.safetensors",
        "feature_nets_public_io.safetensors",
        "adm_ref_public.npz",
        "adm_sample_compressed_public.npz",
        "metrics_public.npz",
    ] {
        let bytes =
            std::fs::read(golden.join(name)).unwrap_or_else(|e| panic!("golden {name}: {e}"));
        files.push(CorpusFile {
            name: name.to_owned(),
            ext: ext_of(name),
            weight: (8_000_000 / bytes.len().max(1)).clamp(1, 10),
            files: single(bytes),
        });
    }
    for name in [
        "full_zip.pt",
        "full_zip_p4.pt",
        "full_legacy.pt",
        "full_deflated.pt",
        "bigendian.pt",
    ] {
        files.push(CorpusFile {
            name: name.to_owned(),
            files: single(std::fs::read(generated.join(name)).unwrap()),
            ext: "pt",
            weight: 10,
        });
    }
    files.push(CorpusFile {
        name: "deflate bomb".to_owned(),
        files: single(deflate_bomb(16)),
        ext: "pt",
        weight: 4,
    });
    files.push(CorpusFile {
        name: "journal".to_owned(),
        files: valid_journal(generated),
        ext: "journal",
        weight: 15,
    });
    let cache = generated.join("cache.npz");
    sample_features(CACHE_ROWS)
        .save_sealed(&cache, CACHE_KEY)
        .unwrap();
    files.push(CorpusFile {
        name: "feature cache entry".to_owned(),
        files: single(std::fs::read(&cache).unwrap()),
        ext: "cache",
        weight: 15,
    });
    files.push(CorpusFile {
        name: "rank parts".to_owned(),
        files: valid_parts(generated),
        ext: "parts",
        weight: 15,
    });
    files
}

/// Numbers that are counts, sizes, ranks or indices in some JSON file, hostile to each.
const JSON_NUMBERS: [&str; 10] = [
    "0",
    "1",
    "-1",
    "288230376151711744",
    "4294967296",
    "18446744073709551615",
    "9223372036854775807",
    "-9223372036854775808",
    "1e300",
    "0.5",
];

/// Structural damage to a JSON file (a count, range, checksum or name replaced, a key removed),
/// or byte damage when it is not JSON.
fn mutate_json(rng: &mut Rng, data: &mut Vec<u8>) {
    use serde_json::Value;
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return mutate(rng, data);
    };
    for _ in 0..1 + rng.below(3) {
        // Every node, by its JSON pointer.
        let mut pointers = vec![String::new()];
        let mut i = 0;
        while i < pointers.len() {
            let children: Vec<String> = match value.pointer(&pointers[i]) {
                Some(Value::Object(m)) => m
                    .keys()
                    .map(|k| k.replace('~', "~0").replace('/', "~1"))
                    .collect(),
                Some(Value::Array(a)) => (0..a.len()).map(|j| j.to_string()).collect(),
                _ => Vec::new(),
            };
            let at = pointers[i].clone();
            pointers.extend(children.into_iter().map(|c| format!("{at}/{c}")));
            i += 1;
        }
        let at = rng.pick(&pointers).clone();
        let replacement = match rng.below(6) {
            0 | 1 => serde_json::from_str(rng.pick::<&str>(&JSON_NUMBERS)).unwrap(),
            2 => serde_json::json!([[0, u64::MAX], [1u64 << 62, 1u64 << 63]]),
            3 => Value::String(
                rng.pick(&["", "0/0", "1/0", "../../x", "rank-1.features.npz"])
                    .to_string(),
            ),
            4 => Value::Null,
            _ => {
                // Removed from its parent, where it has one.
                if let Some((parent, key)) = at.rsplit_once('/') {
                    match value.pointer_mut(parent) {
                        Some(Value::Object(m)) => {
                            m.remove(&key.replace("~1", "/").replace("~0", "~"));
                        }
                        Some(Value::Array(a)) if !a.is_empty() => {
                            a.pop();
                        }
                        _ => {}
                    }
                }
                continue;
            }
        };
        if let Some(node) = value.pointer_mut(&at) {
            *node = replacement;
        }
    }
    *data = serde_json::to_vec(&value).unwrap();
}

/// The input of `seed`: a mutated corpus input (one of its files), or a synthesised one (mutated
/// half the time).
fn input(seed: u64, corpus: &[CorpusFile], picks: &[usize]) -> Input {
    let mut rng = Rng(seed);
    if rng.chance(2) {
        let file = &corpus[picks[rng.below(picks.len())]];
        let mut files = file.files.clone();
        let (name, bytes) = &mut files[rng.below(file.files.len())];
        if name.ends_with(".json") && rng.chance(2) {
            mutate_json(&mut rng, bytes);
        } else {
            mutate(&mut rng, bytes);
        }
        return Input {
            origin: format!("mutated {}", file.name),
            files,
            ext: file.ext,
        };
    }
    let (origin, mut bytes, ext) = match rng.below(6) {
        0 | 1 => {
            let synth = synth_tensors(&mut rng);
            (
                "zip with random tensors",
                zip_checkpoint(&mut rng, &synth),
                "pt",
            )
        }
        2 => {
            let synth = synth_tensors(&mut rng);
            (
                "legacy with random tensors",
                legacy_checkpoint(&mut rng, &synth),
                "pt",
            )
        }
        3 => {
            let synth = synth_amplified(&mut rng);
            let bytes = if rng.chance(4) {
                legacy_checkpoint(&mut rng, &synth)
            } else {
                zip_checkpoint(&mut rng, &synth)
            };
            ("amplifying pickle", bytes, "pt")
        }
        4 => (
            "random safetensors",
            synth_safetensors(&mut rng),
            "safetensors",
        ),
        _ => {
            let npy = synth_npy(&mut rng);
            ("random npz", npz_of(&mut rng, &npy), "npz")
        }
    };
    let origin = if rng.chance(2) {
        mutate(&mut rng, &mut bytes);
        format!("{origin}, mutated")
    } else {
        origin.to_owned()
    };
    Input {
        origin,
        files: vec![(String::new(), bytes)],
        ext,
    }
}

/// How far the readers got with one input: how deep the fuzzing reaches.
#[derive(Default)]
struct Reached {
    inputs: usize,
    opened: usize,
    tensors_read: usize,
    over_budget: usize,
    npz_images: usize,
    npy_headers: usize,
    journals_resumed: usize,
    records_read: usize,
    features_loaded: usize,
    sealed_loaded: usize,
    parts_gathered: usize,
    parts_joined: usize,
}

/// Runs every reader that could take the input at `path`, counting how far each got.
fn exercise(path: &Path, ext: &str, reached: &mut Reached) {
    reached.inputs += 1;
    match ext {
        "journal" => exercise_journal(path, reached),
        "cache" => exercise_cache(path, reached),
        "parts" => exercise_parts(path, reached),
        _ => exercise_file(path, reached),
    }
}

/// Resumes the journal and reads back every record it kept, which must be the records committed
/// (its checksums refuse any other).
fn exercise_journal(path: &Path, reached: &mut Reached) {
    let streams = journal_streams();
    let Ok(mut journal) = Journal::open(path, &journal_settings(), &streams, JOURNAL_TOTAL, true)
    else {
        return;
    };
    reached.journals_resumed += 1;
    let completed = journal.completed();
    for stream in &streams {
        let records = journal.read(&stream.name, 0..completed);
        assert_eq!(
            records.ok(),
            Some(journal_records(stream.record_bytes, completed)),
            "journal resumed with {completed} images but other `{}` records",
            stream.name
        );
        reached.records_read += 1;
    }
}

/// Loads the cache entry as a feature file and as a sealed entry, which must be refused unless
/// its arrays are the ones sealed.
fn exercise_cache(path: &Path, reached: &mut Reached) {
    if FeatureSet::load(path).is_ok() {
        reached.features_loaded += 1;
    }
    if let Ok(set) = FeatureSet::load_sealed(path, CACHE_KEY, CACHE_ROWS, &CACHE_WIDTHS) {
        assert!(
            set == sample_features(CACHE_ROWS),
            "a sealed entry whose arrays changed was loaded: {set:?}"
        );
        reached.sealed_loaded += 1;
    }
}

/// Gathers the run's parts as `merge OUT_DIR` does (manifests read, files verified, indices
/// joined) and joins their features, which must then be the features of every sample in order.
fn exercise_parts(path: &Path, reached: &mut Reached) {
    let Ok(parts) = parts_in(&RunLayout::folder(path), Progress::Hidden) else {
        return;
    };
    reached.parts_gathered += 1;
    let files: Option<Vec<PathBuf>> = parts.iter().map(|p| p.file("features")).collect();
    let Some(files) = files else {
        return;
    };
    let Ok(sets) = files
        .iter()
        .map(|f| FeatureSet::load(f))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    if let Ok(joined) = FeatureSet::join(&sets, &files) {
        let whole = FeatureSet {
            indices: Some((0..PART_SAMPLES as i64).collect()),
            ..sample_features(PART_SAMPLES)
        };
        assert!(
            joined == whole,
            "verified parts joined into other features: {joined:?}"
        );
        reached.parts_joined += 1;
    }
}

/// The checkpoint, npz-image and npy-header readers on one file.
fn exercise_file(path: &Path, reached: &mut Reached) {
    match Checkpoint::open_with(path, ReadBudget::Bytes(BUDGET)) {
        Ok(ck) => {
            reached.opened += 1;
            let _ = ck.summary().to_string();
            match ck.tensors_at(None) {
                Ok(_) => reached.tensors_read += 1,
                Err(e) if matches!(e.kind, ErrorKind::Budget { .. }) => reached.over_budget += 1,
                Err(_) => {}
            }
            let _ = ck.state_dict(false);
            let _ = ck.select(Some("model/t0"));
        }
        Err(e) if matches!(e.kind, ErrorKind::Budget { .. }) => reached.over_budget += 1,
        Err(_) => {}
    }
    if let Ok(mut images) = NpzImages::open(path, 2) {
        for _ in 0..8 {
            if !matches!(images.next_batch(2), Ok(Some(_))) {
                break;
            }
            reached.npz_images += 1;
        }
    }
    let bytes = std::fs::read(path).unwrap();
    // The npy header of the first entry, or the bytes themselves.
    let npy = zip::ZipArchive::new(Cursor::new(&bytes))
        .ok()
        .and_then(|mut z| {
            let mut entry = z.by_index(0).ok()?;
            let mut head = Vec::new();
            (&mut entry).take(1 << 20).read_to_end(&mut head).ok()?;
            Some(head)
        })
        .unwrap_or(bytes);
    if let Ok(header) = read_npy_header(&mut Cursor::new(&npy)) {
        reached.npy_headers += 1;
        let _ = validate_image_header(&header);
    }
}

fn fuzz() {
    let seconds = env_u64("LLAMAGEN_FUZZ_SECONDS", DEFAULT_SECONDS);
    let first_seed = env_u64("LLAMAGEN_FUZZ_SEED", 0);
    let min_runs = env_u64("LLAMAGEN_FUZZ_RUNS", MIN_RUNS);
    let generated = tempfile::tempdir().unwrap();
    support::run_reference("fixtures/make_checkpoints.py", &[generated.path()]);
    let corpus = corpus(generated.path());
    let picks: Vec<usize> = corpus
        .iter()
        .enumerate()
        .flat_map(|(i, f)| std::iter::repeat_n(i, f.weight))
        .collect();
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let work = tempfile::tempdir().unwrap();
    // The unmutated journal, cache entry and parts are read all the way: otherwise their mutations
    // would only ever reach the first check that refuses them.
    let mut valid = Reached::default();
    for file in corpus
        .iter()
        .filter(|f| ["journal", "cache", "parts"].contains(&f.ext))
    {
        let path = work.path().join(format!("valid.{}", file.ext));
        write_input(&path, &file.files);
        exercise(&path, file.ext, &mut valid);
    }
    assert_eq!(
        (
            valid.journals_resumed,
            valid.records_read,
            valid.sealed_loaded,
            valid.parts_joined
        ),
        (1, 2, 1, 1),
        "the valid journal, cache entry or parts were refused"
    );
    // Panics are caught and reported below, with their seeds.
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let deadline = Duration::from_secs(seconds);
    let mut failures = Vec::new();
    let mut runs = 0u64;
    let mut reached: BTreeMap<String, Reached> = BTreeMap::new();
    while runs < min_runs || start.elapsed() < deadline {
        let seed = first_seed + runs;
        let input = input(seed, &corpus, &picks);
        // A fresh folder for each input: a journal or parts folder is rewritten by its reader.
        let dir = work.path().join(format!("seed-{seed}"));
        let path = dir.join(format!("input.{}", input.ext));
        write_input(&path, &input.files);
        let began = Instant::now();
        let kind = input
            .origin
            .split(',')
            .next()
            .unwrap_or_default()
            .to_owned();
        let tally = reached.entry(kind).or_default();
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&path, input.ext, tally)));
        let took = began.elapsed();
        let problem = match outcome {
            Err(payload) => Some(
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .map_or_else(|| "panic".to_owned(), |m| format!("panic: {m}")),
            ),
            Ok(()) if took > SLOW => Some(format!("took {took:?}")),
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            let kept = keep.join(format!("seed-{seed}.{}", input.ext));
            write_input(&kept, &input.files);
            failures.push(format!(
                "seed {seed} ({}): {problem}; input kept as {}",
                input.origin,
                kept.display()
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        runs += 1;
    }
    let _ = std::panic::take_hook();
    println!(
        "fuzzed the readers with {runs} inputs (seeds {first_seed}..{}) in {:.1} s",
        first_seed + runs,
        start.elapsed().as_secs_f64()
    );
    println!(
        "inputs / checkpoint opened / all tensors read / over budget / npz images / npy header / \
         journal resumed / records read / features loaded / sealed entry loaded / parts gathered / \
         parts joined"
    );
    for (kind, r) in &reached {
        println!(
            "{:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  {kind}",
            r.inputs,
            r.opened,
            r.tensors_read,
            r.over_budget,
            r.npz_images,
            r.npy_headers,
            r.journals_resumed,
            r.records_read,
            r.features_loaded,
            r.sealed_loaded,
            r.parts_gathered,
            r.parts_joined
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `{"model": {"w": float32 tensor of 4}, <extra>}`: the pickle with `extra` (key-value opcodes).
fn with_model(extra: impl FnOnce(&mut Pickle)) -> Synth {
    let mut p = Pickle::new();
    p.op(b"}(").str("model").op(b"}(").str("w");
    p.tensor(("torch", "FloatStorage"), "0", 4, &View::contiguous(4));
    p.op(b"u");
    extra(&mut p);
    p.op(b"u");
    Synth {
        pickle: p.finish(),
        storages: vec![("0".to_owned(), vec![0; 16], 4)],
    }
}

#[test]
fn synthesised_hostile_checkpoints_read_or_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let small = ReadBudget::Bytes(4 << 20);
    let message = |e: llamagen_eval::checkpoint::CheckpointError| e.to_string();

    // 64 MiB deflated, 16 elements viewed: read within 4 MiB, the rest never inflated.
    let bomb = file("bomb.pt", &deflate_bomb(16));
    let ck = Checkpoint::open_with(&bomb, small).unwrap();
    let head = ck.tensors_at(Some("model")).unwrap();
    assert_eq!(head[0].1.size(), [16]);
    assert_eq!(
        head[0].1.abs().sum(tch::Kind::Double).double_value(&[]),
        0.0
    );
    // A view of all of it is over that budget, and says so.
    let whole = file("whole.pt", &deflate_bomb(BOMB_NUMEL));
    let err = message(
        Checkpoint::open_with(&whole, small)
            .unwrap()
            .tensors_at(None)
            .unwrap_err(),
    );
    assert_mentions(
        &err,
        &[
            "whole.pt",
            "archive/data/0",
            "`model.head`",
            "4 MiB",
            "--max-input-memory",
        ],
    );

    // One 1 MiB string referenced 20,000 times: shared, so it opens within 4 MiB.
    let memo = with_model(|p| {
        p.str("notes")
            .op(b"](")
            .op(&[0x8d])
            .op(&(1u64 << 20).to_le_bytes());
        p.op(&vec![b'x'; 1 << 20]).put(0);
        for _ in 0..20_000 {
            p.get(0);
        }
        p.op(b"e");
    });
    let ck = Checkpoint::open_with(file("memo.pt", &plain_zip(&memo, true)), small).unwrap();
    match ck.get("notes") {
        Some(llamagen_eval::checkpoint::Value::List(notes)) => {
            assert_eq!(notes.len(), 20_001);
            assert_eq!(notes[20_000].as_str().map(str::len), Some(1 << 20));
        }
        other => panic!("notes are {other:?}"),
    }
    // A 1000-item tuple referenced 20,000 times is copied into the tree: over the budget.
    let copies = with_model(|p| {
        let items: Vec<i64> = (0..1000).collect();
        p.str("notes").op(b"](").ints(&items).put(0);
        for _ in 0..20_000 {
            p.get(0);
        }
        p.op(b"e");
    });
    let err = message(
        Checkpoint::open_with(file("copies.pt", &plain_zip(&copies, false)), small).unwrap_err(),
    );
    assert_mentions(
        &err,
        &[
            "copies.pt",
            "archive/data.pkl",
            "budget",
            "--max-input-memory",
        ],
    );

    // A quantized storage: described, and reading it names the tensor and the storage type.
    let mut p = Pickle::new();
    p.op(b"}(").str("model").op(b"}(").str("q");
    p.tensor(("torch", "QInt8Storage"), "0", 8, &View::contiguous(8));
    p.op(b"uu");
    let quantized = Synth {
        pickle: p.finish(),
        storages: vec![("0".to_owned(), vec![1; 8], 1)],
    };
    let ck = Checkpoint::open_with(file("q.pt", &plain_zip(&quantized, false)), small).unwrap();
    let err = message(ck.tensors_at(None).unwrap_err());
    assert!(
        err.contains(
            "q.pt: tensor `model.q`: unsupported storage type torch.QInt8Storage (quantized \
             tensors are not supported)"
        ),
        "{err}"
    );

    // 2^62 float32 elements: an impossible size, named as such, at open.
    let mut p = Pickle::new();
    p.op(b"}(").str("model").op(b"}(").str("w");
    p.tensor(
        ("torch", "FloatStorage"),
        "0",
        1 << 62,
        &View::contiguous(4),
    );
    p.op(b"uu");
    let huge = Synth {
        pickle: p.finish(),
        storages: vec![("0".to_owned(), vec![0; 16], 4)],
    };
    let err = message(
        Checkpoint::open_with(file("huge.pt", &plain_zip(&huge, false)), small).unwrap_err(),
    );
    assert!(
        err.contains(
            "huge.pt: tensor `model.w`: storage `archive/data/0` claims 4611686018427387904 \
             float32 elements, more bytes than any file can hold"
        ),
        "{err}"
    );
}

/// A manifest claiming a world of 2^58 ranks (as a damaged or edited one may): the offline gather
/// names the first missing ranks instead of sizing or walking a list of them all.
#[test]
fn a_manifest_claiming_a_huge_world_is_refused_naming_missing_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_input(&run, &valid_parts(dir.path()));
    let manifest = RunLayout::folder(&run).manifest(0);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    json["world_size"] = serde_json::json!(1u64 << 58);
    std::fs::write(&manifest, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = parts_in(&RunLayout::folder(&run), Progress::Hidden)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no part from rank 2, 3, 4, "), "{err}");
    assert!(err.contains(", 65, …"), "{err}");
}

/// A manifest edited to a world of one and a job of 2^58 samples: the join refuses it naming the
/// manifest, before it lists the samples it claims.
#[test]
fn a_manifest_claiming_a_huge_job_is_refused_before_listing_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_input(&run, &valid_parts(dir.path()));
    let layout = RunLayout::folder(&run);
    let manifest = layout.manifest(0);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    json["world_size"] = serde_json::json!(1);
    json["shard"] = serde_json::json!("0/1");
    json["samples"] = serde_json::json!(1u64 << 58);
    std::fs::write(&manifest, serde_json::to_vec(&json).unwrap()).unwrap();
    std::fs::remove_file(layout.manifest(1)).unwrap();
    let err = parts_in(&layout, Progress::Hidden).unwrap_err().to_string();
    let name = manifest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.contains(&name) && err.contains(&format!("claims a job of {} samples", 1u64 << 58)),
        "{err}"
    );
}
