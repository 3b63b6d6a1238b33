use crate::{storage, NnError};
use nn_kernels::index::checked_product;
use nn_kernels::Element;

/// A dense, row-major array with a shape: the first dimension is the batch wherever a
/// layer takes a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

/// `∏shape`, refused when the count, or its size in bytes, exceeds what an
/// allocation can hold (`isize::MAX` bytes).
fn element_count<T>(shape: &[usize]) -> Result<usize, NnError> {
    let too_large = NnError::Geometry(nn_kernels::GeometryError::Overflow { what: "tensor size" });
    let count = checked_product(shape).ok_or(too_large.clone())?;
    match count.checked_mul(size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(count),
        _ => Err(too_large),
    }
}

impl<T: Element> Tensor<T> {
    /// A tensor of zeros.
    ///
    /// # Errors
    /// [`NnError`] when the element count overflows.
    pub fn zeros(shape: &[usize]) -> Result<Self, NnError> {
        Ok(Self { shape: shape.to_vec(), data: storage::zeroed(element_count::<T>(shape)?) })
    }

    /// A tensor over `data`, which must hold exactly `∏shape` elements.
    ///
    /// # Errors
    /// [`NnError`] when `data.len()` differs from `∏shape` or the count overflows.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self, NnError> {
        let expected = element_count::<T>(shape)?;
        if data.len() != expected {
            return Err(NnError::DataLength { shape: shape.to_vec(), expected, got: data.len() });
        }
        Ok(Self { shape: shape.to_vec(), data })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The elements, row-major, mutably.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The elements, giving up the shape.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Gives the same elements a new shape with the same number of elements.
    ///
    /// # Errors
    /// [`NnError`] when `∏shape` differs from the element count.
    pub fn reshape(&mut self, shape: &[usize]) -> Result<(), NnError> {
        let expected = element_count::<T>(shape)?;
        if expected != self.data.len() {
            return Err(NnError::DataLength { shape: shape.to_vec(), expected, got: self.data.len() });
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    /// Sets the shape to `[batch, per_sample…]`, keeping the allocation when it is large
    /// enough, so a buffer refilled every step is allocated once. Contents are
    /// unspecified afterwards: callers overwrite them.
    ///
    /// # Errors
    /// [`NnError`] when the element count overflows.
    pub fn set_batch_shape(&mut self, batch: usize, per_sample: &[usize]) -> Result<(), NnError> {
        let len = element_count::<T>(per_sample)?
            .checked_mul(batch)
            .ok_or(NnError::Geometry(nn_kernels::GeometryError::Overflow { what: "tensor size" }))?;
        self.shape.clear();
        self.shape.push(batch);
        self.shape.extend_from_slice(per_sample);
        storage::resize_unspecified(&mut self.data, len);
        Ok(())
    }

    /// Copies `other` into `self`, reusing the allocation.
    pub(crate) fn copy_from(&mut self, other: &Tensor<T>) {
        self.shape.clone_from(&other.shape);
        storage::resize_unspecified(&mut self.data, other.data.len());
        nn_kernels::elementwise::copy(&other.data, &mut self.data).expect("resized to the source's length");
    }

    /// Converts every element to another element type.
    pub fn cast<U: Element>(&self) -> Tensor<U> {
        Tensor { shape: self.shape.clone(), data: self.data.iter().map(|v| U::from_f64(v.as_f64())).collect() }
    }
}

impl<T: Element> Default for Tensor<T> {
    /// An empty tensor of shape `[0]`, to be filled later.
    fn default() -> Self {
        Self { shape: vec![0], data: Vec::new() }
    }
}

impl<T> AsRef<Tensor<T>> for Tensor<T> {
    fn as_ref(&self) -> &Tensor<T> {
        self
    }
}
