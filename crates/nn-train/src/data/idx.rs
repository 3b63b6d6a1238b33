//! The IDX format of the MNIST family: a 4-byte magic (two zero bytes, an element
//! type code, a dimension count), one big-endian u32 per dimension, then the elements
//! row-major. Files may be gzip-compressed (detected by the gzip magic).
//!
//! Every length is checked against the header: a short file, a long one, a bad magic
//! or an unsupported element type is an error naming the file and the byte offset.

use super::DataError;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The element type code of unsigned bytes, the only one the MNIST family uses.
const TYPE_U8: u8 = 0x08;

/// The first two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most element bytes [`read_idx`] accepts from a header: 2 GiB, some forty times
/// the largest file of the MNIST family. A header declaring more is refused before
/// anything is allocated; [`read_idx_limited`] sets another bound.
pub const MAX_ELEMENT_BYTES: usize = 1 << 31;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, gzip-compressed or raw, declaring at most
/// [`MAX_ELEMENT_BYTES`] of elements.
///
/// # Errors
/// [`DataError`] naming the file and, where the format is at fault, the byte offset
/// (of the decompressed stream, for a gzip file).
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    read_idx_limited(path, MAX_ELEMENT_BYTES)
}

/// [`read_idx`] with another bound on the element bytes a header may declare.
///
/// A gzip stream is decompressed only as far as the header says, plus one byte to
/// detect trailing data: a small file that would inflate to gigabytes (a "gzip bomb")
/// costs no more than what its header declares, and that is checked first.
///
/// # Errors
/// As for [`read_idx`].
pub fn read_idx_limited(path: &Path, max_element_bytes: usize) -> Result<IdxArray, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    read_idx_from(BufReader::new(file), path, max_element_bytes)
}

/// Reads an IDX stream, gzip-compressed or raw, declaring at most `max_element_bytes`
/// of elements; `path` names it in errors. Nothing past the declared elements is read
/// (or decompressed) but one byte, to tell that there is more.
///
/// # Errors
/// [`DataError`] naming `path` and the byte offset.
pub fn read_idx_from(mut reader: impl Read, path: &Path, max_element_bytes: usize) -> Result<IdxArray, DataError> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let mut magic = [0u8; 2];
    let peeked = read_up_to(&mut reader, &mut magic).map_err(io)?;
    let mut stream = std::io::Cursor::new(magic[..peeked].to_vec()).chain(reader);
    if magic[..peeked] == GZIP_MAGIC {
        return read_gzip(stream, path, max_element_bytes);
    }
    read_stream(&mut stream, path, max_element_bytes, &io)
}

/// Parses the bytes of an (uncompressed) IDX file; `path` names it in errors.
///
/// # Errors
/// [`DataError`] naming `path` and the byte offset.
pub fn parse_idx(mut bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    read_stream(&mut bytes, path, usize::MAX, &|source| DataError::Io { path: path.to_path_buf(), source })
}

#[cfg(feature = "gzip")]
fn read_gzip(compressed: impl Read, path: &Path, max_element_bytes: usize) -> Result<IdxArray, DataError> {
    let decompressed = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut stream = Counted { inner: flate2::read::MultiGzDecoder::new(compressed), count: decompressed.clone() };
    read_stream(&mut stream, path, max_element_bytes, &|source| DataError::Gzip {
        path: path.to_path_buf(),
        decompressed: decompressed.get(),
        source,
    })
}

/// Without the `gzip` feature, a compressed file is refused with a message saying so.
#[cfg(not(feature = "gzip"))]
fn read_gzip(_compressed: impl Read, path: &Path, _max_element_bytes: usize) -> Result<IdxArray, DataError> {
    Err(DataError::Invalid {
        path: path.to_path_buf(),
        offset: 0,
        details: "gzip-compressed, and nn-train was built without its `gzip` feature".into(),
    })
}

/// A reader that counts the bytes it has produced.
#[cfg(feature = "gzip")]
struct Counted<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<usize>>,
}

#[cfg(feature = "gzip")]
impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n);
        Ok(n)
    }
}

/// Fills as much of `buf` as the stream holds; the count read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads header and elements from `reader`, checking every length against the header;
/// `failed` turns a read error into the caller's kind of error.
fn read_stream(
    reader: &mut impl Read,
    path: &Path,
    max_element_bytes: usize,
    failed: &dyn Fn(std::io::Error) -> DataError,
) -> Result<IdxArray, DataError> {
    let file = || PathBuf::from(path);
    let mut magic = [0u8; 4];
    let got = read_up_to(reader, &mut magic).map_err(failed)?;
    if got < 4 {
        return Err(DataError::Truncated { path: file(), offset: got, needed: 4, what: "magic number" });
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::BadMagic { path: file(), found: magic });
    }
    if magic[2] != TYPE_U8 {
        return Err(DataError::UnsupportedType { path: file(), code: magic[2] });
    }
    let rank = magic[3] as usize;
    if rank == 0 {
        return Err(DataError::Invalid { path: file(), offset: 3, details: "dimension count is zero".into() });
    }
    let header_len = 4 + 4 * rank;
    let mut sizes = vec![0u8; 4 * rank];
    let got = read_up_to(reader, &mut sizes).map_err(failed)?;
    if got < sizes.len() {
        return Err(DataError::Truncated {
            path: file(),
            offset: 4 + got,
            needed: header_len,
            what: "dimension sizes",
        });
    }
    let dims: Vec<usize> =
        sizes.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let overflow = || DataError::Invalid { path: file(), offset: 4, details: format!("dimensions {dims:?} overflow") };
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)?;
    let expected = header_len.checked_add(count).ok_or_else(overflow)?;
    if count > max_element_bytes {
        return Err(DataError::Invalid {
            path: file(),
            offset: 4,
            details: format!(
                "dimensions {dims:?} declare {count} bytes of elements, over the limit of {max_element_bytes}"
            ),
        });
    }
    // One byte more than declared, to see trailing data; grown as bytes arrive, so a
    // short file costs no more than its length.
    let mut data = Vec::with_capacity(count.min(1 << 26));
    reader.take(count as u64 + 1).read_to_end(&mut data).map_err(failed)?;
    if data.len() < count {
        let offset = header_len + data.len();
        return Err(DataError::Truncated { path: file(), offset, needed: expected, what: "elements" });
    }
    if data.len() > count {
        // Not read to the end: past the header's elements, a stream may be a bomb.
        return Err(DataError::Invalid {
            path: file(),
            offset: expected,
            details: format!("data past the {count} elements the header declares"),
        });
    }
    Ok(IdxArray { dims, data })
}

/// The byte offset of element `index` in an IDX file with `rank` dimensions.
pub(crate) fn element_offset(rank: usize, index: usize) -> usize {
    4 + 4 * rank + index
}
