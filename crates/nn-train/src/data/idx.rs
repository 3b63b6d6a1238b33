//! The IDX format of the MNIST family: a 4-byte magic (two zero bytes, an element
//! type code, a dimension count), one big-endian u32 per dimension, then the elements
//! row-major. Files may be gzip-compressed (detected by the gzip magic).
//!
//! Every length is checked against the header: a short file, a long one, a bad magic
//! or an unsupported element type is an error naming the file and the byte offset.

use super::DataError;
use std::path::{Path, PathBuf};

/// The element type code of unsigned bytes, the only one the MNIST family uses.
const TYPE_U8: u8 = 0x08;

/// The first two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The decompressed contents of a gzip file.
#[cfg(feature = "gzip")]
fn gunzip(raw: &[u8], path: &Path) -> Result<Vec<u8>, DataError> {
    use std::io::Read;
    let mut out = Vec::with_capacity(raw.len() * 2);
    flate2::read::MultiGzDecoder::new(raw).read_to_end(&mut out).map_err(|source| DataError::Gzip {
        path: path.to_path_buf(),
        decompressed: out.len(),
        source,
    })?;
    Ok(out)
}

/// Without the `gzip` feature, a compressed file is refused with a message saying so.
#[cfg(not(feature = "gzip"))]
fn gunzip(_raw: &[u8], path: &Path) -> Result<Vec<u8>, DataError> {
    Err(DataError::Invalid {
        path: path.to_path_buf(),
        offset: 0,
        details: "gzip-compressed, and nn-train was built without its `gzip` feature".into(),
    })
}

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, gzip-compressed or raw.
///
/// # Errors
/// [`DataError`] naming the file and, where the format is at fault, the byte offset.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) { gunzip(&raw, path)? } else { raw };
    let (dims, header_len) = parse_header(&bytes, path)?;
    let mut data = bytes;
    // Drop the header in place: a copy of a 47 MB image file would double the peak.
    data.drain(..header_len);
    Ok(IdxArray { dims, data })
}

/// Parses the bytes of an (uncompressed) IDX file; `path` names it in errors.
///
/// # Errors
/// [`DataError`] naming `path` and the byte offset.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    let (dims, header_len) = parse_header(bytes, path)?;
    Ok(IdxArray { dims, data: bytes[header_len..].to_vec() })
}

/// Checks the header and the total length; returns the dimensions and header length.
fn parse_header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize), DataError> {
    let file = || PathBuf::from(path);
    if bytes.len() < 4 {
        return Err(DataError::Truncated { path: file(), offset: bytes.len(), needed: 4, what: "magic number" });
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::BadMagic { path: file(), found: [bytes[0], bytes[1], bytes[2], bytes[3]] });
    }
    if bytes[2] != TYPE_U8 {
        return Err(DataError::UnsupportedType { path: file(), code: bytes[2] });
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(DataError::Invalid { path: file(), offset: 3, details: "dimension count is zero".into() });
    }
    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(DataError::Truncated {
            path: file(),
            offset: bytes.len(),
            needed: header_len,
            what: "dimension sizes",
        });
    }
    let dims: Vec<usize> =
        bytes[4..header_len].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| DataError::Invalid {
        path: file(),
        offset: 4,
        details: format!("dimensions {dims:?} overflow"),
    })?;
    let expected = header_len + count;
    if bytes.len() < expected {
        return Err(DataError::Truncated { path: file(), offset: bytes.len(), needed: expected, what: "elements" });
    }
    if bytes.len() > expected {
        return Err(DataError::Invalid {
            path: file(),
            offset: expected,
            details: format!("{} bytes past the {count} elements the header declares", bytes.len() - expected),
        });
    }
    Ok((dims, header_len))
}

/// The byte offset of element `index` in an IDX file with `rank` dimensions.
pub(crate) fn element_offset(rank: usize, index: usize) -> usize {
    4 + 4 * rank + index
}
