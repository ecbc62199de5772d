//! Tensor shapes. The first dimension is always the batch: every tensor a
//! [`Backend`](crate::Backend) holds is a batch of samples, and per-sample
//! quantities (times, norms, coefficients) have one entry per batch element.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A tensor shape `[batch, d1, d2, ...]` (row-major, last dimension contiguous).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "Vec<usize>", into = "Vec<usize>")]
pub struct Shape(Vec<usize>);

/// The most elements a shape may have: `isize::MAX / 16`, so that byte
/// sizes of `f32` tensors, and the element counts of ops that grow a tensor
/// (4x for 2x up-sampling), never overflow.
pub const MAX_NUMEL: usize = isize::MAX as usize / 16;

impl Shape {
    /// Builds a shape, rejecting an empty dimension list, a zero-sized
    /// dimension, or more than [`MAX_NUMEL`] elements in all. So for every
    /// `Shape`, [`Shape::numel`] and [`Shape::sample_numel`] are exact
    /// (no overflow) and at least 1, which the CPU kernels rely on.
    pub fn new(dims: impl Into<Vec<usize>>) -> Result<Self> {
        let shape = Shape(dims.into());
        if shape.0.is_empty() {
            return Err(Error::InvalidShape {
                shape,
                reason: "a tensor needs at least the batch dimension",
            });
        }
        if shape.0.contains(&0) {
            return Err(Error::InvalidShape {
                shape,
                reason: "zero-sized dimensions are not supported",
            });
        }
        let numel = shape.0.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.is_none_or(|n| n > MAX_NUMEL) {
            return Err(Error::InvalidShape {
                shape,
                reason: "too many elements (more than isize::MAX / 16)",
            });
        }
        Ok(shape)
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of samples (the first dimension).
    pub fn batch(&self) -> usize {
        self.0[0]
    }

    /// Elements in one sample (product of all but the first dimension; 1 for a 1-D shape).
    pub fn sample_numel(&self) -> usize {
        self.0[1..].iter().product()
    }

    /// Total number of elements.
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// The same per-sample shape with a different batch size.
    pub fn with_batch(&self, batch: usize) -> Result<Self> {
        let mut dims = self.0.clone();
        dims[0] = batch;
        Shape::new(dims)
    }
}

impl TryFrom<Vec<usize>> for Shape {
    type Error = Error;
    fn try_from(dims: Vec<usize>) -> Result<Self> {
        Shape::new(dims)
    }
}

impl From<Shape> for Vec<usize> {
    fn from(shape: Shape) -> Self {
        shape.0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_batch() {
        let s = Shape::new([4, 3, 8, 8]).unwrap();
        assert_eq!(s.batch(), 4);
        assert_eq!(s.sample_numel(), 192);
        assert_eq!(s.numel(), 768);
        assert_eq!(s.to_string(), "[4, 3, 8, 8]");
        assert_eq!(Shape::new([5]).unwrap().sample_numel(), 1);
        assert_eq!(s.with_batch(2).unwrap().dims(), &[2, 3, 8, 8]);
    }

    #[test]
    fn rejects_empty_and_zero() {
        assert!(matches!(
            Shape::new(Vec::<usize>::new()),
            Err(Error::InvalidShape { .. })
        ));
        assert!(matches!(
            Shape::new([2, 0]),
            Err(Error::InvalidShape { .. })
        ));
    }

    #[test]
    fn rejects_element_counts_that_overflow() {
        // The product wraps around usize (to 2 here) or exceeds the cap.
        for dims in [
            vec![2, (1usize << 63) + 1],
            vec![1, 1, 6_148_914_691_236_517_206, 3],
            vec![MAX_NUMEL + 1],
            vec![2, MAX_NUMEL / 2 + 1],
        ] {
            assert!(
                matches!(Shape::new(dims.clone()), Err(Error::InvalidShape { .. })),
                "{dims:?}"
            );
        }
        assert_eq!(Shape::new([MAX_NUMEL]).unwrap().numel(), MAX_NUMEL);
    }
}
