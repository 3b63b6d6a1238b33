//! Seeded segmentation data in any number of dimensions: volumes holding a few random
//! ellipsoids of varied brightness in Gaussian noise, labelled "inside an ellipsoid".

use nn_core::{seeded_rng, NnError, Tensor};
use nn_train::data::TensorSet;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// How the volumes are drawn.
#[derive(Debug, Clone, Copy)]
pub struct VolumeSpec {
    /// Spatial dimensions.
    pub dims: usize,
    /// Cells per side.
    pub side: usize,
    /// Ellipsoids per volume, at least one.
    pub max_ellipsoids: usize,
    /// Standard deviation of the noise (the ellipsoids' brightness is 0.5–1.5).
    pub noise: f64,
}

/// `count` volumes `[count, 1, side…]` and their masks, from `seed`.
pub fn generate(spec: VolumeSpec, count: usize, seed: u64) -> Result<TensorSet<f32>, NnError> {
    let cells = spec.side.pow(spec.dims as u32);
    let mut rng = seeded_rng(seed);
    let noise = Normal::new(0.0, spec.noise).expect("a finite, non-negative deviation");
    let (mut inputs, mut masks) = (Vec::with_capacity(count * cells), Vec::with_capacity(count * cells));
    let side = spec.side as f64;
    for _ in 0..count {
        let shapes: Vec<(Vec<f64>, Vec<f64>, f64)> = (0..rng.gen_range(1..=spec.max_ellipsoids))
            .map(|_| {
                let centre = (0..spec.dims).map(|_| rng.gen_range(0.2 * side..0.8 * side)).collect();
                let radii = (0..spec.dims).map(|_| rng.gen_range(0.1 * side..0.25 * side)).collect();
                (centre, radii, rng.gen_range(0.5..1.5))
            })
            .collect();
        let mut index = vec![0usize; spec.dims];
        for _ in 0..cells {
            // The brightest ellipsoid holding the cell gives its value.
            let inside = shapes.iter().filter(|(centre, radii, _)| {
                let r2: f64 = (0..spec.dims).map(|d| ((index[d] as f64 + 0.5 - centre[d]) / radii[d]).powi(2)).sum();
                r2 <= 1.0
            });
            let brightness = inside.map(|s| s.2).fold(0.0, f64::max);
            masks.push(if brightness > 0.0 { 1.0 } else { 0.0 });
            inputs.push((brightness + noise.sample(&mut rng)) as f32);
            // Row-major odometer over the cells.
            for d in (0..spec.dims).rev() {
                index[d] += 1;
                if index[d] < spec.side {
                    break;
                }
                index[d] = 0;
            }
        }
    }
    let mut shape = vec![count, 1];
    shape.extend(std::iter::repeat_n(spec.side, spec.dims));
    TensorSet::new(Tensor::from_vec(&shape, inputs)?, Tensor::from_vec(&shape, masks)?)
}
