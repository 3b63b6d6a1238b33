//! The IDX reader refuses every malformed file with the file and byte offset.

use nn_train::data::idx::{parse_idx, read_idx};
use nn_train::data::{ClassificationSet, DataError};
use std::io::{Read, Write};
use std::path::Path;

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn valid_files_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    std::fs::write(dir.path().join("a"), &bytes).unwrap();
    std::fs::write(dir.path().join("a.gz"), gzip(&bytes)).unwrap();
    for name in ["a", "a.gz"] {
        let arr = read_idx(&dir.path().join(name)).unwrap();
        assert_eq!(arr.dims, vec![2, 3]);
        assert_eq!(arr.data, vec![1, 2, 3, 4, 5, 6]);
    }
}

#[test]
fn truncated_and_oversized() {
    let p = Path::new("x.idx");
    let full = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    let err = parse_idx(&full[..full.len() - 2], p).unwrap_err();
    assert!(matches!(err, DataError::Truncated { offset: 16, needed: 18, what: "elements", .. }), "{err:?}");
    assert_eq!(err.to_string(), "x.idx: truncated at byte offset 16: the elements need 18 bytes");
    assert!(matches!(parse_idx(&full[..6], p), Err(DataError::Truncated { offset: 6, needed: 12, .. })));
    assert!(matches!(parse_idx(&full[..2], p), Err(DataError::Truncated { offset: 2, needed: 4, .. })));
    let mut long = full.clone();
    long.push(9);
    assert!(matches!(parse_idx(&long, p), Err(DataError::Invalid { offset: 18, .. })));
}

#[test]
fn corrupted_headers() {
    let p = Path::new("x.idx");
    let mut bad_magic = idx(&[1], &[0]);
    bad_magic[0] = 0x42;
    assert!(matches!(parse_idx(&bad_magic, p), Err(DataError::BadMagic { .. })));
    let mut float = idx(&[1], &[0, 0, 0, 0]);
    float[2] = 0x0D;
    let err = parse_idx(&float, p).unwrap_err();
    assert!(err.to_string().contains("byte offset 2: unsupported IDX element type 0x0d"), "{err}");
    let huge = idx(&[u32::MAX, u32::MAX, u32::MAX], &[]);
    assert!(parse_idx(&huge, p).is_err());
}

#[test]
fn truncated_gzip_stream() {
    let dir = tempfile::tempdir().unwrap();
    let compressed = gzip(&idx(&[100], &[7; 100]));
    let path = dir.path().join("cut.gz");
    std::fs::write(&path, &compressed[..compressed.len() / 2]).unwrap();
    let err = read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. } | DataError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains("cut.gz"));
}

#[test]
fn labels_checked_against_images_and_classes() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels, short) = (dir.path().join("img"), dir.path().join("lab"), dir.path().join("short"));
    std::fs::write(&images, idx(&[3, 2, 2], &[0; 12])).unwrap();
    std::fs::write(&labels, idx(&[3], &[1, 0, 10])).unwrap();
    std::fs::write(&short, idx(&[2], &[1, 0])).unwrap();
    let err = ClassificationSet::from_idx(&images, &labels, 10).unwrap_err();
    // Label 10 of sample 2 sits at byte 4 + 4 + 2.
    assert!(matches!(err, DataError::Invalid { offset: 10, .. }), "{err:?}");
    assert!(err.to_string().contains("label 10 of sample 2"));
    assert!(matches!(ClassificationSet::from_idx(&images, &short, 10), Err(DataError::Mismatch { .. })));
    assert!(ClassificationSet::from_idx(&images, &labels, 11).is_ok());
    assert!(matches!(read_idx(&dir.path().join("absent")), Err(DataError::Io { .. })));
}

#[test]
fn split_off_keeps_samples_and_labels_together() {
    use nn_core::Tensor;
    use nn_train::data::Dataset;
    let pixels: Vec<u8> = (0..5 * 4).map(|i| i as u8).collect();
    let mut train = ClassificationSet::new(pixels, vec![0, 1, 2, 3, 4], &[1, 2, 2], 5).unwrap();
    let validation = train.split_off(2);
    assert_eq!((Dataset::<f32>::len(&train), Dataset::<f32>::len(&validation)), (3, 2));
    assert_eq!(validation.labels(), &[3, 4]);
    let (mut x, mut t) = (Tensor::<f32>::default(), Vec::new());
    validation.fill_batch(&[1], &mut x, &mut t).unwrap();
    // Sample 4's pixels are 16..20, scaled by 1/255.
    assert_eq!(x.shape(), &[1, 1, 2, 2]);
    assert_eq!(x.data(), &[16.0 / 255.0, 17.0 / 255.0, 18.0 / 255.0, 19.0 / 255.0]);
    assert_eq!(t, vec![4]);
    assert!(validation.fill_batch(&[2], &mut x, &mut t).is_err());
}

/// A gzip stream of `header` followed by `zeros` zero bytes, compressed a megabyte at
/// a time (a "bomb": ~1 KB per MB).
fn gzip_bomb(header: &[u8], zeros: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(header).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..zeros >> 20 {
        enc.write_all(&block).unwrap();
    }
    enc.finish().unwrap()
}

#[test]
fn a_gzip_bomb_is_read_no_further_than_its_header_declares() {
    // One 28×28 image declared, 64 MiB of zeros behind it: refused as trailing data
    // once one byte past the image has been decompressed (the message does not count
    // the rest: counting would mean inflating it).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.gz");
    std::fs::write(&path, gzip_bomb(&idx(&[1, 28, 28], &[]), 64 << 20)).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    let err = read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::Invalid { offset: 800, .. }), "{err}");
    assert!(err.to_string().contains("data past the 784 elements"), "{err}");
}

/// An endless stream of zeros that counts what is read from it.
struct Endless<'a> {
    header: std::io::Cursor<Vec<u8>>,
    pulled: &'a std::cell::Cell<usize>,
}

impl Read for Endless<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.header.read(buf)?;
        let n = if n > 0 {
            n
        } else {
            buf.fill(0);
            buf.len()
        };
        self.pulled.set(self.pulled.get() + n);
        Ok(n)
    }
}

#[test]
fn a_stream_is_read_one_byte_past_its_declared_elements_and_no_further() {
    use nn_train::data::idx::read_idx_from;
    let pulled = std::cell::Cell::new(0);
    let stream = Endless { header: std::io::Cursor::new(idx(&[2, 3], &[])), pulled: &pulled };
    let err = read_idx_from(stream, Path::new("endless"), usize::MAX).unwrap_err();
    assert!(matches!(err, DataError::Invalid { offset: 18, .. }), "{err}");
    assert_eq!(pulled.get(), 12 + 6 + 1);
}

#[test]
fn declared_sizes_are_checked_before_anything_is_allocated() {
    use nn_train::data::idx::read_idx_limited;
    let dir = tempfile::tempdir().unwrap();
    // 60,000 × 28 × 28 declared in a file of 20 bytes: over a limit of 1 MB.
    let path = dir.path().join("big");
    std::fs::write(&path, idx(&[60_000, 28, 28], &[1, 2, 3, 4])).unwrap();
    let err = read_idx_limited(&path, 1 << 20).unwrap_err();
    assert!(matches!(err, DataError::Invalid { offset: 4, .. }), "{err}");
    assert!(err.to_string().contains("over the limit"), "{err}");
    // Under the default limit the same file is merely short.
    assert!(matches!(read_idx(&path), Err(DataError::Truncated { offset: 20, .. })));
    // Dimensions whose product is 2^64 − 1, so that adding the header would wrap.
    let wrap = idx(&[65_535, 65_537, 641, 6_700_417], &[]);
    let err = parse_idx(&wrap, Path::new("wrap")).unwrap_err();
    assert!(matches!(err, DataError::Invalid { offset: 4, .. }), "{err}");
    // And a product past 2^64.
    let err = parse_idx(&idx(&[u32::MAX; 3], &[]), Path::new("huge")).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
}
