//! Training-time image transforms: random crop with zero padding, horizontal flip, and
//! normalization — torchvision's `RandomCrop(size, padding)` → `RandomHorizontalFlip()` →
//! `ToTensor()` → `Normalize(mean, std)`, on single-channel `u8` images.
//!
//! A [`Transform`] is one concrete draw (crop offset, flip), so a transform can be replayed and
//! tested by hand; [`Augment::draw`] picks one from a random generator.
//!
//! ```
//! use qat_data::{Augment, Normalize, Transform};
//! // A 2×3 image, padded by 1, cropped at offset (dx 2, dy 0), then flipped.
//! let img = [1u8, 2, 3, 4, 5, 6];
//! let mut out = [0f32; 6];
//! let t = Transform { dx: 2, dy: 0, flip: true };
//! Augment::crop_flip(1).apply(&img, 2, 3, t, Normalize::IDENTITY_U8, &mut out).unwrap();
//! // Padded rows: [0 0 0 0 0], [0 1 2 3 0], [0 4 5 6 0]; crop rows 0..2, columns 2..5:
//! // [0 0 0], [2 3 0]; flipped: [0 0 0], [0 3 2].
//! let px: Vec<f32> = out.iter().map(|v| v.round()).collect();
//! assert_eq!(px, [0.0, 0.0, 0.0, 0.0, 3.0, 2.0]);
//! ```

use rand::Rng;

use crate::{DataError, Dataset, Result};

/// `(pixel / 255 − mean) / std`: torchvision's `ToTensor` + `Normalize`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: f32,
    pub std: f32,
}

impl Normalize {
    /// Fashion-MNIST's training-set pixel mean and standard deviation (in [0, 1] units).
    pub const FASHION_MNIST: Normalize = Normalize {
        mean: 0.2860,
        std: 0.3530,
    };
    /// MNIST's training-set pixel mean and standard deviation.
    pub const MNIST: Normalize = Normalize {
        mean: 0.1307,
        std: 0.3081,
    };
    /// Raw pixel values back (`mean 0`, `std 1/255`; exact up to f32 rounding): for tests and
    /// hand computations.
    pub const IDENTITY_U8: Normalize = Normalize {
        mean: 0.0,
        std: 1.0 / 255.0,
    };

    /// Checked constructor: both finite, `std > 0`.
    pub fn new(mean: f32, std: f32) -> Result<Self> {
        if !mean.is_finite() || !std.is_finite() || std <= 0.0 {
            return Err(DataError::Invalid(format!(
                "normalization needs a finite mean and a finite std > 0, got mean {mean}, std {std}"
            )));
        }
        Ok(Normalize { mean, std })
    }

    /// The mean and (population) standard deviation of a dataset's pixels in [0, 1], computed
    /// in f64.
    pub fn from_dataset(data: &Dataset) -> Result<Self> {
        if data.images.is_empty() {
            return Err(DataError::Invalid(
                "cannot compute normalization of an empty dataset".into(),
            ));
        }
        let n = data.images.len() as f64;
        let (s, s2) = data.images.iter().fold((0f64, 0f64), |(s, s2), &p| {
            let v = p as f64 / 255.0;
            (s + v, s2 + v * v)
        });
        let mean = s / n;
        let var = (s2 / n - mean * mean).max(0.0);
        Self::new(mean as f32, var.sqrt() as f32)
    }

    /// One normalized pixel.
    #[inline]
    pub fn apply(&self, p: u8) -> f32 {
        (p as f32 / 255.0 - self.mean) / self.std
    }
}

/// One draw of the random transform: the crop's top-left corner in the padded image
/// (`0 ..= 2·pad` each way; `pad, pad` is the identity crop) and whether to mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    pub dx: usize,
    pub dy: usize,
    pub flip: bool,
}

/// The augmentation policy: zero padding for the random crop (0: no crop) and whether to flip
/// horizontally with probability ½.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    pub pad: usize,
    pub hflip: bool,
}

impl Augment {
    /// No augmentation (evaluation).
    pub fn none() -> Self {
        Augment::default()
    }

    /// Random crop with `pad` pixels of zero padding plus random horizontal flip.
    pub fn crop_flip(pad: usize) -> Self {
        Augment { pad, hflip: true }
    }

    /// The transform that changes nothing.
    pub fn identity(&self) -> Transform {
        Transform {
            dx: self.pad,
            dy: self.pad,
            flip: false,
        }
    }

    /// Draw a transform: offsets uniform in `0 ..= 2·pad`, flip with probability ½ if enabled.
    pub fn draw<R: Rng>(&self, rng: &mut R) -> Transform {
        let span = 2 * self.pad + 1;
        Transform {
            dx: rng.gen_range(0..span),
            dy: rng.gen_range(0..span),
            flip: self.hflip && rng.gen_bool(0.5),
        }
    }

    /// Write `t` applied to the `rows × cols` image `src` into `out` (same size), normalized.
    /// Pixels that come from the padding are 0 before normalization, as in torchvision.
    pub fn apply(
        &self,
        src: &[u8],
        rows: usize,
        cols: usize,
        t: Transform,
        norm: Normalize,
        out: &mut [f32],
    ) -> Result<()> {
        let n = rows * cols;
        if src.len() != n || out.len() != n {
            return Err(DataError::Invalid(format!(
                "augment: a {rows}x{cols} image needs {n} input and output values, got {} and {}",
                src.len(),
                out.len()
            )));
        }
        if t.dx > 2 * self.pad || t.dy > 2 * self.pad || (t.flip && !self.hflip) {
            return Err(DataError::Invalid(format!(
                "augment: transform {t:?} is not one of {self:?}"
            )));
        }
        let zero = norm.apply(0);
        for y in 0..rows {
            // Source row in the unpadded image, if the crop row is not padding.
            let sy = (y + t.dy).checked_sub(self.pad).filter(|&r| r < rows);
            let row_out = &mut out[y * cols..(y + 1) * cols];
            for (x, o) in row_out.iter_mut().enumerate() {
                let xc = if t.flip { cols - 1 - x } else { x };
                let sx = (xc + t.dx).checked_sub(self.pad).filter(|&c| c < cols);
                *o = match (sy, sx) {
                    (Some(r), Some(c)) => norm.apply(src[r * cols + c]),
                    _ => zero,
                };
            }
        }
        Ok(())
    }
}
