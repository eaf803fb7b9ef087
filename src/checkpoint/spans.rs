//! Reading tensor bytes out of formats whose storages are plain byte spans of the file (the legacy
//! `torch.save` format and safetensors): the file opened once, each read a seek and a bounded
//! reader. What a storage key means and where its span lies is the format's own layout `L`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::error::ErrorKind;
use super::ReadRange;

/// A checkpoint file opened for reading spans of it, with the format's layout of the spans.
pub(crate) struct SpanReader<L> {
    file: BufReader<File>,
    pub(super) layout: L,
}

impl<L: Clone> SpanReader<L> {
    pub(crate) fn new(path: &Path, layout: &L) -> Result<Self, ErrorKind> {
        Ok(Self {
            file: BufReader::new(File::open(path).map_err(ErrorKind::Io)?),
            layout: layout.clone(),
        })
    }
}

impl<L> SpanReader<L> {
    /// Calls `fill` with a reader of bytes `range` of the span that starts at byte `span_start` of
    /// the file (the caller has checked that the span holds them).
    pub(super) fn read_span<T>(
        &mut self,
        span_start: u64,
        range: &ReadRange,
        fill: impl FnOnce(&mut dyn Read) -> Result<T, ErrorKind>,
    ) -> Result<T, ErrorKind> {
        self.file
            .seek(SeekFrom::Start(span_start + range.start))
            .map_err(ErrorKind::Io)?;
        fill(&mut (&mut self.file).take(range.len()))
    }
}
