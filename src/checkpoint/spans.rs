//! Reading tensor bytes out of formats whose storages are plain byte spans of the file (the legacy
//! `torch.save` format and safetensors): the file opened once, each read a seek and a bounded
//! reader. What a storage key means and where its span lies is the format's own layout `L`
//! ([`SpanLayout`]).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::error::ErrorKind;
use super::ReadRange;

/// Where a format's storages lie in its file.
pub(crate) trait SpanLayout {
    /// The file offset of storage `key`'s first byte, once it is checked that the storage holds
    /// bytes `range`; else the format's error for a missing or short storage.
    fn span_start(&self, key: &str, range: &ReadRange) -> Result<u64, ErrorKind>;
}

/// A checkpoint file opened for reading spans of it, with the format's layout of the spans.
pub(crate) struct SpanReader<L> {
    file: BufReader<File>,
    layout: L,
}

impl<L: SpanLayout + Clone> SpanReader<L> {
    pub(crate) fn new(path: &Path, layout: &L) -> Result<Self, ErrorKind> {
        Ok(Self {
            file: BufReader::new(File::open(path).map_err(ErrorKind::Io)?),
            layout: layout.clone(),
        })
    }

    /// Calls `fill` with a reader of bytes `range` of storage `key`.
    pub(crate) fn read<T>(
        &mut self,
        key: &str,
        range: &ReadRange,
        fill: impl FnOnce(&mut dyn Read) -> Result<T, ErrorKind>,
    ) -> Result<T, ErrorKind> {
        let span_start = self.layout.span_start(key, range)?;
        self.file
            .seek(SeekFrom::Start(span_start + range.start))
            .map_err(ErrorKind::Io)?;
        fill(&mut (&mut self.file).take(range.len()))
    }
}
