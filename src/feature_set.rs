//! Features of image sets: extracted once per set in batches by each feature network of the run
//! (Inception-V3 always; DINOv2 and CLIP when asked for), saved to and loaded from `.npz` (`pool`
//! [N,2048], `spatial` [N,2023], `logits` [N,1008], `dinov2` [N,1024], `clip` [N,768], f32), and
//! shared by every metric.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array4};
use tch::{nn, Device, Tensor};

use crate::data::DataError;
use crate::models::clip::ClipVisionModel;
use crate::models::dinov2::Dinov2;
use crate::models::inception::{InceptionV3, Resize};

/// Why features could not be produced or read.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// The images to extract features from could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A feature `.npz` could not be read or written, or its arrays are inconsistent.
    #[error("{}: {message}", path.display())]
    File {
        /// The feature file.
        path: PathBuf,
        /// What went wrong with it.
        message: String,
    },
    /// The Inception-V3 weights file is unusable.
    #[error("Inception weights {}: {message}", path.display())]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What went wrong with it.
        message: String,
    },
    /// The Inception forward pass or a tensor conversion failed in libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The CLIP network refused its input.
    #[error(transparent)]
    Clip(#[from] crate::models::clip::ClipError),
    /// A network gave NaN or infinite features: its weights are damaged (or not weights of
    /// this network), and every metric from them would be meaningless.
    #[error("{network} weights {}: the network gave {bad} non-finite feature value(s) (NaN or infinite) in `{output}`; the weights file is damaged or holds other weights: download it again", weights.display())]
    NonFinite {
        /// The network's name.
        network: &'static str,
        /// Its weights file.
        weights: PathBuf,
        /// The feature array with non-finite values.
        output: &'static str,
        /// How many values in the batch were not finite.
        bad: usize,
    },
}

/// A feature network and the feature arrays it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Network {
    /// The FID Inception-V3: `pool`, `spatial`, `logits`.
    Inception,
    /// DINOv2 ViT (FD_DINOv2): the final-norm CLS token, `dinov2`.
    Dinov2,
    /// CLIP's vision tower (CMMD): the L2-normalised image embedding, `clip`.
    Clip,
}

impl Network {
    /// Every network, in the order features are extracted and listed.
    pub const ALL: [Network; 3] = [Network::Inception, Network::Dinov2, Network::Clip];

    /// The name on the command line and in cache entries.
    pub fn name(self) -> &'static str {
        match self {
            Network::Inception => "inception",
            Network::Dinov2 => "dinov2",
            Network::Clip => "clip",
        }
    }

    /// Inception, then DINOv2 and CLIP when present: a run's networks in [`Network::ALL`] order.
    pub fn with(dinov2: bool, clip: bool) -> Vec<Network> {
        let mut networks = vec![Network::Inception];
        if dinov2 {
            networks.push(Network::Dinov2);
        }
        if clip {
            networks.push(Network::Clip);
        }
        networks
    }

    /// The feature arrays it fills.
    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            Network::Inception => &["pool", "spatial", "logits"],
            Network::Dinov2 => &["dinov2"],
            Network::Clip => &["clip"],
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Network::ALL
            .into_iter()
            .find(|n| n.name() == s.trim())
            .ok_or_else(|| format!("unknown feature network `{s}`: use inception, dinov2 or clip"))
    }
}

fn file_error(path: &Path, message: impl Into<String>) -> FeatureError {
    FeatureError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The three Inception feature sets of one image set; any may be absent in a loaded file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureSet {
    /// `pool_3` features [N, 2048]: FID, precision/recall and KID.
    pub pool: Option<Array2<f32>>,
    /// ADM's `mixed_6/conv` spatial features [N, 2023]: sFID.
    pub spatial: Option<Array2<f32>>,
    /// Unbiased logits [N, 1008]: Inception Score.
    pub logits: Option<Array2<f32>>,
    /// DINOv2's final-norm CLS token [N, 1024 for ViT-L/14]: FD_DINOv2.
    pub dinov2: Option<Array2<f32>>,
    /// CLIP's L2-normalised image embedding [N, 768 for ViT-L/14@336]: CMMD.
    pub clip: Option<Array2<f32>>,
    /// Sample index of each row, when the images came from a `sample --shard` batch: lets `merge`
    /// put shards' features back into sample order.
    pub indices: Option<Array1<i64>>,
}

const KEYS: [&str; 5] = ["pool", "spatial", "logits", "dinov2", "clip"];

/// The npz entry of a cache entry's seal: its key and the checksum of its arrays.
const SEAL: &str = "cache_seal";

impl FeatureSet {
    fn fields(&self) -> [(&'static str, &Option<Array2<f32>>); 5] {
        [
            (KEYS[0], &self.pool),
            (KEYS[1], &self.spatial),
            (KEYS[2], &self.logits),
            (KEYS[3], &self.dinov2),
            (KEYS[4], &self.clip),
        ]
    }

    /// The rows of `sets` (read from `files`) as one feature set, in sample-index order when
    /// every set carries `indices`, else in the order given; the rows themselves are unchanged, so
    /// statistics and every metric of the joined set equal those of the features of the joined
    /// images.
    pub fn join(sets: &[FeatureSet], files: &[PathBuf]) -> Result<FeatureSet, FeatureError> {
        let (Some(first), Some(first_file)) = (sets.first(), files.first()) else {
            return Err(file_error(Path::new("."), "no feature files to join"));
        };
        let present = |f: &FeatureSet| f.fields().map(|(_, a)| a.is_some());
        for (set, path) in sets.iter().zip(files).skip(1) {
            if present(set) != present(first) {
                return Err(file_error(
                    path,
                    format!(
                        "holds a different set of features (pool/spatial/logits/dinov2/clip) than {}",
                        first_file.display()
                    ),
                ));
            }
        }
        let with_indices = sets.iter().filter(|s| s.indices.is_some()).count();
        if with_indices != 0 && with_indices != sets.len() {
            return Err(file_error(
                first_file,
                "some feature shards carry `indices` and some do not: merge them all with or all without",
            ));
        }
        // Without indices the rows follow each other in the order given.
        let mut running = 0i64;
        let indices: Vec<Vec<i64>> = sets
            .iter()
            .map(|set| match &set.indices {
                Some(i) => i.to_vec(),
                None => {
                    let rows = (running..running + set.len() as i64).collect();
                    running += set.len() as i64;
                    rows
                }
            })
            .collect();
        let order = crate::partition::join_order(&indices, None).map_err(|e| {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            file_error(first_file, e.naming(&names))
        })?;
        let mut joined = FeatureSet {
            indices: (with_indices > 0).then(|| order.iter().map(|p| p.index).collect()),
            ..FeatureSet::default()
        };
        for key in KEYS {
            let Some(dim) = first.get(key).map(|a| a.ncols()) else {
                continue;
            };
            let mut rows = Array2::<f32>::zeros((order.len(), dim));
            for (out, placement) in order.iter().enumerate() {
                let source = sets[placement.part]
                    .get(key)
                    .filter(|a| a.ncols() == dim)
                    .ok_or_else(|| {
                        file_error(
                            &files[placement.part],
                            format!(
                                "`{key}` features of another width than {}'s {dim}",
                                first_file.display()
                            ),
                        )
                    })?;
                rows.row_mut(out).assign(&source.row(placement.row));
            }
            if let Some(slot) = joined.slot(key) {
                *slot = Some(rows);
            }
        }
        Ok(joined)
    }

    /// The array named `key` (`pool`, `spatial`, `logits`, `dinov2`, `clip`).
    pub fn get(&self, key: &str) -> Option<&Array2<f32>> {
        self.fields()
            .into_iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, a)| a.as_ref())
    }

    /// The slot of the array named `key`.
    pub fn slot(&mut self, key: &str) -> Option<&mut Option<Array2<f32>>> {
        match key {
            "pool" => Some(&mut self.pool),
            "spatial" => Some(&mut self.spatial),
            "logits" => Some(&mut self.logits),
            "dinov2" => Some(&mut self.dinov2),
            "clip" => Some(&mut self.clip),
            _ => None,
        }
    }

    /// Moves every array `other` holds into this set (rows must describe the same images).
    pub fn absorb(&mut self, other: FeatureSet) {
        for (key, array) in [
            ("pool", other.pool),
            ("spatial", other.spatial),
            ("logits", other.logits),
            ("dinov2", other.dinov2),
            ("clip", other.clip),
        ] {
            if let (Some(array), Some(slot)) = (array, self.slot(key)) {
                *slot = Some(array);
            }
        }
    }

    /// Only the arrays of `network`.
    pub fn of(&self, network: Network) -> FeatureSet {
        let mut out = FeatureSet::default();
        for key in network.outputs() {
            if let (Some(array), Some(slot)) = (self.get(key).cloned(), out.slot(key)) {
                *slot = Some(array);
            }
        }
        out
    }

    /// Number of images the features describe.
    pub fn len(&self) -> usize {
        self.fields()
            .iter()
            .find_map(|(_, a)| a.as_ref().map(|a| a.nrows()))
            .unwrap_or(0)
    }

    /// True when no feature set holds a row (or none is present).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the present feature sets to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), FeatureError> {
        self.save_with_seal(path, None)
    }

    fn save_with_seal(&self, path: &Path, seal: Option<String>) -> Result<(), FeatureError> {
        crate::io::write_npz_atomically(path, |npz| {
            for (key, array) in self.fields() {
                if let Some(array) = array {
                    npz.add_array(key, array)?;
                }
            }
            if let Some(indices) = &self.indices {
                npz.add_array("indices", indices)?;
            }
            if let Some(seal) = seal {
                npz.add_array(SEAL, &Array1::from(seal.into_bytes()))?;
            }
            Ok(())
        })
        .map_err(|e| file_error(path, e.message))
    }

    /// The sha256 of the feature arrays (names, shapes and values), in hex.
    fn checksum(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for (key, array) in self.fields() {
            if let Some(array) = array {
                hasher.update(format!("{key}{:?}", array.shape()));
                for value in array.iter() {
                    hasher.update(value.to_le_bytes());
                }
            }
        }
        format!("{:x}", hasher.finalize())
    }

    /// Writes the features as a cache entry sealed to `key` (what they are the features of): the
    /// file also holds the key and a checksum of the arrays, which [`FeatureSet::load_sealed`]
    /// verifies.
    pub fn save_sealed(&self, path: &Path, key: &str) -> Result<(), FeatureError> {
        self.save_with_seal(path, Some(format!("{key}\n{}", self.checksum())))
    }

    /// Reads a cache entry written by [`FeatureSet::save_sealed`] and verifies it before it is
    /// used: sealed to `key`, arrays unchanged since (checksum), `rows` rows of the `widths`
    /// given (`(array, width)`, each required), every value finite. An entry copied from
    /// another image set or network, cut, edited or damaged is refused with the reason.
    pub fn load_sealed(
        path: &Path,
        key: &str,
        rows: usize,
        widths: &[(&str, Option<usize>)],
    ) -> Result<Self, FeatureError> {
        let set = Self::load(path)?;
        let mut npz = crate::io::open_npz(path).map_err(|e| file_error(path, e.message))?;
        let seal: Array1<u8> = npz
            .by_name(SEAL)
            .map_err(|_| file_error(path, "has no seal (not written by this version's cache)"))?;
        let seal = String::from_utf8_lossy(seal.as_slice().unwrap_or_default()).into_owned();
        let (sealed_key, checksum) = seal.split_once('\n').unwrap_or((&seal, ""));
        if sealed_key != key {
            return Err(file_error(
                path,
                "holds the features of other images or another network (its seal names another key)",
            ));
        }
        if checksum != set.checksum() {
            return Err(file_error(
                path,
                "its arrays changed after it was written (checksum)",
            ));
        }
        for (name, width) in widths {
            let array = set
                .get(name)
                .ok_or_else(|| file_error(path, format!("has no `{name}`")))?;
            if array.nrows() != rows {
                return Err(file_error(
                    path,
                    format!("`{name}` has {} rows for {rows} images", array.nrows()),
                ));
            }
            if let Some(width) = width {
                if array.ncols() != *width {
                    return Err(file_error(
                        path,
                        format!(
                            "`{name}` is {} wide, the network gives {width}",
                            array.ncols()
                        ),
                    ));
                }
            }
            if array.iter().any(|v| !v.is_finite()) {
                return Err(file_error(
                    path,
                    format!("`{name}` holds NaN or infinite values"),
                ));
            }
        }
        Ok(set)
    }

    /// Reads whichever of `pool`, `spatial`, `logits` the file holds (f32 or f64).
    pub fn load(path: &Path) -> Result<Self, FeatureError> {
        let mut npz = crate::io::open_npz(path).map_err(|e| file_error(path, e.message))?;
        let names = npz
            .names()
            .map_err(|e| file_error(path, format!("cannot list entries: {e}")))?;
        let mut read = |key: &str| -> Result<Option<Array2<f32>>, FeatureError> {
            if !names
                .iter()
                .any(|n| n == key || n.strip_suffix(".npy") == Some(key))
            {
                return Ok(None);
            }
            let array = match npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix2>(key) {
                Ok(a) => a,
                Err(_) => crate::io::read_f64::<ndarray::Ix2>(&mut npz, key)
                    .map_err(|e| {
                        file_error(
                            path,
                            format!("entry `{key}` must be a 2-D float array: {e}"),
                        )
                    })?
                    .mapv(|v| v as f32),
            };
            Ok(Some(array))
        };
        let mut set = FeatureSet {
            pool: read("pool")?,
            spatial: read("spatial")?,
            logits: read("logits")?,
            dinov2: read("dinov2")?,
            clip: read("clip")?,
            indices: None,
        };
        if names.iter().any(|n| n == "indices" || n == "indices.npy") {
            let indices: Array1<i64> = npz.by_name("indices").map_err(|e| {
                file_error(
                    path,
                    format!("entry `indices` must be a 1-D int64 array: {e}"),
                )
            })?;
            if indices.len() != set.len() {
                return Err(file_error(
                    path,
                    format!("{} indices for {} feature rows", indices.len(), set.len()),
                ));
            }
            set.indices = Some(indices);
        }
        if set.fields().iter().all(|(_, a)| a.is_none()) {
            return Err(file_error(
                path,
                format!(
                    "holds none of `pool`, `spatial`, `logits`, `dinov2`, `clip` (entries: {}); make feature files with `llamagen-eval features`",
                    names.join(", ")
                ),
            ));
        }
        let counts: Vec<(&str, usize)> = set
            .fields()
            .iter()
            .filter_map(|(k, a)| a.as_ref().map(|a| (*k, a.nrows())))
            .collect();
        if counts.windows(2).any(|w| w[0].1 != w[1].1) {
            return Err(file_error(
                path,
                format!("feature sets disagree on the number of images: {counts:?}"),
            ));
        }
        Ok(set)
    }
}

pub use crate::io::sha256_file;

/// The feature networks of a run with their weights on a device, ready to extract features:
/// Inception-V3, and DINOv2 and CLIP when the run asks for them.
pub struct Extractor {
    _vs: nn::VarStore,
    model: InceptionV3,
    device: Device,
    resize: Resize,
    weights: PathBuf,
    dinov2: Option<(nn::VarStore, Dinov2, PathBuf)>,
    clip: Option<(nn::VarStore, ClipVisionModel, PathBuf)>,
}

/// The first hex digits of the released FID weights' sha256 (pytorch-fid's file name carries them).
const RELEASED_WEIGHTS_SHA256_PREFIX: &str = "6726825d";

/// Whether weights of this sha256 (hex) are pytorch-fid's released FID Inception file.
pub fn is_released_inception(sha256: &str) -> bool {
    sha256.starts_with(RELEASED_WEIGHTS_SHA256_PREFIX)
}

impl Extractor {
    /// Wraps a model whose variables live in `vs`, loaded from the file `weights` (named when
    /// the network gives non-finite features).
    pub fn new(vs: nn::VarStore, model: InceptionV3, resize: Resize, weights: PathBuf) -> Self {
        Extractor {
            device: vs.device(),
            _vs: vs,
            model,
            resize,
            weights,
            dinov2: None,
            clip: None,
        }
    }

    /// Adds DINOv2 (its variables in `vs`, loaded from `weights`).
    pub fn with_dinov2(mut self, vs: nn::VarStore, model: Dinov2, weights: PathBuf) -> Self {
        self.dinov2 = Some((vs, model, weights));
        self
    }

    /// Adds CLIP's vision tower (its variables in `vs`, loaded from `weights`).
    pub fn with_clip(mut self, vs: nn::VarStore, model: ClipVisionModel, weights: PathBuf) -> Self {
        self.clip = Some((vs, model, weights));
        self
    }

    /// The networks loaded, in [`Network::ALL`] order.
    pub fn networks(&self) -> Vec<Network> {
        Network::with(self.dinov2.is_some(), self.clip.is_some())
    }

    /// The feature arrays `network` gives, with their widths.
    pub fn outputs(&self, network: Network) -> Vec<(&'static str, usize)> {
        match network {
            Network::Inception => vec![
                ("pool", crate::models::inception::POOL_DIM as usize),
                ("spatial", crate::models::inception::SPATIAL_DIM as usize),
                ("logits", crate::models::inception::LOGITS_DIM as usize),
            ],
            Network::Dinov2 => self
                .dinov2
                .as_ref()
                .map(|(_, m, _)| vec![("dinov2", m.feature_dim() as usize)])
                .unwrap_or_default(),
            Network::Clip => self
                .clip
                .as_ref()
                .map(|(_, m, _)| vec![("clip", m.config().projection_dim as usize)])
                .unwrap_or_default(),
        }
    }

    /// The features of `networks` (each loaded) for one batch of u8 NHWC images.
    pub fn extract(
        &self,
        batch: &Array4<u8>,
        networks: &[Network],
    ) -> Result<FeatureSet, FeatureError> {
        let mut set = FeatureSet::default();
        for network in networks {
            match network {
                Network::Inception => {
                    let [pool, spatial, logits] = self.extract_batch(batch)?;
                    for (output, array) in
                        [("pool", &pool), ("spatial", &spatial), ("logits", &logits)]
                    {
                        check_finite(*network, &self.weights, output, array)?;
                    }
                    set.pool = Some(pool);
                    set.spatial = Some(spatial);
                    set.logits = Some(logits);
                }
                Network::Dinov2 => {
                    let (_, model, weights) =
                        self.dinov2.as_ref().ok_or_else(|| not_loaded(*network))?;
                    let input = crate::models::dinov2::preprocess(batch.view());
                    let features = tch::no_grad(|| model.features(&input.to_device(self.device)));
                    let features = tensor_to_array(&features)?;
                    check_finite(*network, weights, "dinov2", &features)?;
                    set.dinov2 = Some(features);
                }
                Network::Clip => {
                    let (_, model, weights) =
                        self.clip.as_ref().ok_or_else(|| not_loaded(*network))?;
                    let input = crate::models::clip::preprocess(
                        batch.view(),
                        model.config().image_size as usize,
                    )?;
                    let embeddings = model.embed(&input.to_device(self.device))?;
                    let features = tensor_to_array(&embeddings.normalized)?;
                    check_finite(*network, weights, "clip", &features)?;
                    set.clip = Some(features);
                }
            }
        }
        Ok(set)
    }

    /// The device the network runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The preprocessing (ADM or pytorch-fid) applied to every batch before the network.
    pub fn resize(&self) -> Resize {
        self.resize
    }

    /// Features (pool, spatial, logits) of one batch of u8 NHWC images.
    pub fn extract_batch(&self, batch: &Array4<u8>) -> Result<[Array2<f32>; 3], FeatureError> {
        let (n, h, w, c) = batch.dim();
        let data = batch.as_standard_layout();
        let slice = data.as_slice().expect("standard layout is contiguous");
        let images = Tensor::from_slice(slice)
            .view([n as i64, h as i64, w as i64, c as i64])
            .permute([0, 3, 1, 2])
            .to_device(self.device);
        let features = tch::no_grad(|| self.model.features(&images, self.resize));
        Ok([
            tensor_to_array(&features.pool)?,
            tensor_to_array(&features.spatial)?,
            tensor_to_array(&features.logits)?,
        ])
    }
}

/// Refuses features with NaN or infinite values where they are made, naming the weights: a
/// later metric would only report a NaN with no hint of its cause.
fn check_finite(
    network: Network,
    weights: &Path,
    output: &'static str,
    features: &Array2<f32>,
) -> Result<(), FeatureError> {
    let bad = features.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    Err(FeatureError::NonFinite {
        network: network.name(),
        weights: weights.to_path_buf(),
        output,
        bad,
    })
}

fn not_loaded(network: Network) -> FeatureError {
    FeatureError::Torch(tch::TchError::Kind(format!(
        "the {} network is not loaded",
        network.name()
    )))
}

fn tensor_to_array(t: &Tensor) -> Result<Array2<f32>, FeatureError> {
    let t = t
        .to_device(Device::Cpu)
        .to_kind(tch::Kind::Float)
        .contiguous();
    let size = t.size();
    let (rows, cols) = (size[0] as usize, size[1] as usize);
    let data = Vec::<f32>::try_from(t.flatten(0, -1))?;
    Array2::from_shape_vec((rows, cols), data)
        .map_err(|e| FeatureError::Torch(tch::TchError::Kind(e.to_string())))
}
