//! Fashion-MNIST: where to find it, and how to load it.
//!
//! Search order: an explicit directory, then `$FASHION_MNIST_DIR`, then Debian's
//! `/usr/share/datasets/fashion-mnist` (package `dataset-fashion-mnist`), then the
//! subset shipped in this crate (the first 6,000 training and 1,000 test images),
//! so examples and tests run with nothing installed.

use super::{ClassificationSet, DataError};
use std::path::{Path, PathBuf};

/// The directory of the system-wide copy installed by `apt-get install dataset-fashion-mnist`.
pub const SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The class names, by label.
pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// The shipped subset's directory.
pub fn embedded_subset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-subset")
}

/// Where the data was found, and why that place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    /// The directory.
    pub dir: PathBuf,
    /// How it was chosen: "--data", "FASHION_MNIST_DIR", "system", or "embedded subset".
    pub origin: &'static str,
}

/// Picks the directory to load from, in the order this module's documentation gives.
pub fn locate(explicit: Option<&Path>) -> DataSource {
    if let Some(dir) = explicit {
        return DataSource { dir: dir.to_path_buf(), origin: "--data" };
    }
    if let Some(dir) = std::env::var_os("FASHION_MNIST_DIR") {
        return DataSource { dir: PathBuf::from(dir), origin: "FASHION_MNIST_DIR" };
    }
    if find_file(Path::new(SYSTEM_DIR), FILES[0]).is_some() {
        return DataSource { dir: PathBuf::from(SYSTEM_DIR), origin: "system" };
    }
    DataSource { dir: embedded_subset_dir(), origin: "embedded subset" }
}

/// `name` or `name.gz` in `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)].into_iter().find(|p| p.is_file())
}

fn required(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    find_file(dir, name).ok_or_else(|| DataError::Io {
        path: dir.join(format!("{name}.gz")),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "neither this file nor its uncompressed form exists"),
    })
}

/// The training and test sets in `dir`, samples shaped `[1, 28, 28]`.
///
/// # Errors
/// [`DataError`] naming the file that is missing or malformed.
pub fn load(dir: &Path) -> Result<(ClassificationSet, ClassificationSet), DataError> {
    let train = ClassificationSet::from_idx(&required(dir, FILES[0])?, &required(dir, FILES[1])?, 10)?;
    let test = ClassificationSet::from_idx(&required(dir, FILES[2])?, &required(dir, FILES[3])?, 10)?;
    Ok((train.with_sample_shape(&[1, 28, 28])?, test.with_sample_shape(&[1, 28, 28])?))
}
