//! Image sources: where the images to evaluate come from, read in batches so that a 50,000-image
//! set never has to sit in memory at once.

pub mod npz;
pub mod npz_writer;

use std::path::PathBuf;

use ndarray::Array4;

/// Why images could not be read. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DataError {
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A finite sequence of u8 RGB images (N, H, W, 3), delivered in batches.
pub trait ImageSource {
    /// Number of images in the whole source.
    fn len(&self) -> usize;
    /// True when the source holds no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The next up to `max` images, or `None` at the end.
    fn next_batch(&mut self, max: usize) -> Result<Option<Array4<u8>>, DataError>;
    /// What the source reads, for messages and run records.
    fn describe(&self) -> String;
}
