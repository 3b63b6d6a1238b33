//! Rank-generic index arithmetic: row-major strides and an odometer over a shape, so
//! that geometry is written once for any number of dimensions.

/// Product of the lengths, or `None` on overflow.
pub fn checked_product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Row-major strides of `shape` (the last dimension has stride 1).
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Walks every multi-index of a shape in row-major order, like a car's odometer:
/// the last digit turns fastest.
#[derive(Debug, Clone)]
pub struct Odometer {
    shape: Vec<usize>,
    current: Vec<usize>,
    done: bool,
}

impl Odometer {
    /// An odometer over `shape`; a shape with a zero length yields nothing, and the
    /// empty shape yields one empty index.
    pub fn new(shape: &[usize]) -> Self {
        Self { shape: shape.to_vec(), current: vec![0; shape.len()], done: shape.contains(&0) }
    }

    /// The current index, or `None` once every index has been visited.
    pub fn current(&self) -> Option<&[usize]> {
        (!self.done).then_some(self.current.as_slice())
    }

    /// Moves to the next index in row-major order.
    pub fn advance(&mut self) {
        for d in (0..self.shape.len()).rev() {
            self.current[d] += 1;
            if self.current[d] < self.shape[d] {
                return;
            }
            self.current[d] = 0;
        }
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odometer_visits_row_major_order() {
        let mut odo = Odometer::new(&[2, 3]);
        let mut seen = Vec::new();
        while let Some(i) = odo.current() {
            seen.push(i.to_vec());
            odo.advance();
        }
        let expected: Vec<Vec<usize>> = (0..2).flat_map(|a| (0..3).map(move |b| vec![a, b])).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn odometer_edge_shapes() {
        assert!(Odometer::new(&[3, 0]).current().is_none());
        let mut scalar = Odometer::new(&[]);
        assert_eq!(scalar.current(), Some(&[][..]));
        scalar.advance();
        assert!(scalar.current().is_none());
    }

    #[test]
    fn strides_and_product() {
        assert_eq!(row_major_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(checked_product(&[2, 3, 4]), Some(24));
        assert_eq!(checked_product(&[usize::MAX, 2]), None);
    }
}
