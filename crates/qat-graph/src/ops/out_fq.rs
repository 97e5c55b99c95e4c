//! A QAT layer's activation fake-quant (moving-average observer, then fake quantization with
//! the new qparams; PyTorch's `FusedMovingAvgObsFakeQuantize`) inside the op that produces the
//! activation, the train-mode prescaled BatchNorm (alone or after its convolution).
//!
//! As a module of its own it costs a pass to find the batch's range, a pass into a fresh output
//! tensor (tens of MB per step, page-faulted in again after each free), an autograd node whose
//! backward is a third pass into another fresh tensor, and candle's zero-filled sum for the
//! extra gradient edge. Here the producer's write pass also takes the range
//! ([`affine_range`]), the observer steps once the whole output is written, the output is
//! fake-quantized in place ([`observe_and_apply`]), and the producer's backward multiplies its
//! incoming gradient by the straight-through mask, recomputed from the pre-fake-quant value it
//! recomputes anyway ([`FqGate::grad`]). Values, gradients and observer state equal the
//! separate module's bit for bit.

use std::mem::MaybeUninit;

use candle_core::Result;
use qat_fakequant::kernels::{self as fqk, Affine, Isa};
use qat_fakequant::RangeFeed;
use rayon::prelude::*;

use super::common::{madd, simd_dispatch, PAR_MIN_ELEMS};

/// The fake quantization an op applied to its output, kept for its backward.
#[derive(Clone, Copy, Debug)]
pub(super) struct FqGate {
    a: Affine,
    lo: f32,
    hi: f32,
}

impl FqGate {
    /// The gradient `g` of the fake-quantized output carried back to the value `y` before
    /// fake quantization, as candle's autograd hands it to the producer: `0 + g·mask(y)` (the
    /// fake-quant backward's product, summed into a zero gradient, which turns −0 into +0).
    #[inline(always)]
    pub(super) fn grad(&self, g: f32, y: f32) -> f32 {
        g * fqk::ste_mask_one(y, self.a, self.lo, self.hi) + 0.0
    }
}

/// The range of the values a write pass produced.
#[derive(Clone, Copy, Debug)]
pub(super) struct Range {
    min: f32,
    max: f32,
    /// NaN once any value was NaN or infinite (`v − v` summed), else 0: then `min` / `max` are
    /// exact; otherwise they are recomputed NaN-aware.
    poison: f32,
}

impl Range {
    pub(super) const EMPTY: Range = Range {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        poison: 0.0,
    };

    pub(super) fn merge(self, o: Range) -> Range {
        Range {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            poison: self.poison + o.poison,
        }
    }
}

/// `o = a·x + b`, clamped to `clamp` when given, with the comparisons and rounding of
/// `batch_norm::affine` / `affine_clamp` (the same bits), folding the range of the written
/// values into `r`.
#[inline(always)]
fn affine_range_generic<const FMA: bool>(
    o: &mut [MaybeUninit<f32>],
    x: &[f32],
    a: f32,
    b: f32,
    clamp: Option<(f32, f32)>,
    r: &mut Range,
) {
    match clamp {
        None => range_pass(o, x, r, |v| madd::<FMA>(a, v, b)),
        Some((lo, hi)) => range_pass(o, x, r, |v| {
            let z = madd::<FMA>(a, v, b);
            if z < lo {
                lo
            } else if z > hi {
                hi
            } else {
                z
            }
        }),
    }
}

simd_dispatch!(pub(super) fn affine_range = affine_range_generic(o: &mut [MaybeUninit<f32>], x: &[f32], a: f32, b: f32, clamp: Option<(f32, f32)>, r: &mut Range));

/// `o[i] = f(x[i])` with the written values' range in 16 independent lanes (plain compares:
/// one min / max instruction each; a NaN poisons the range instead).
#[inline(always)]
// `v - v` is not zero: it is NaN for NaN and ±Inf, which is the point.
#[allow(clippy::eq_op)]
fn range_pass(o: &mut [MaybeUninit<f32>], x: &[f32], r: &mut Range, f: impl Fn(f32) -> f32) {
    const L: usize = 16;
    let (mut lo, mut hi, mut bad) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L], [0f32; L]);
    let mut co = o.chunks_exact_mut(L);
    let mut cx = x.chunks_exact(L);
    for (oc, xc) in (&mut co).zip(&mut cx) {
        for i in 0..L {
            let v = f(xc[i]);
            oc[i].write(v);
            lo[i] = if v < lo[i] { v } else { lo[i] };
            hi[i] = if v > hi[i] { v } else { hi[i] };
            bad[i] += v - v;
        }
    }
    for (oi, &xi) in co.into_remainder().iter_mut().zip(cx.remainder()) {
        let v = f(xi);
        oi.write(v);
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
        bad[0] += v - v;
    }
    for i in 0..L {
        *r = r.merge(Range {
            min: lo[i],
            max: hi[i],
            poison: bad[i],
        });
    }
}

/// After the producer wrote all of `y` (whose range its write passes folded into `r`): the
/// observer steps with that range, and `y` is fake-quantized in place with the qparams it
/// returns. Returns what the backward needs, or `None` when fake quantization is off (`y`
/// left as it is). Errors, before `y` or the observer state change, where the module's
/// `forward` would (non-finite values while the observer is on).
pub(super) fn observe_and_apply(
    feed: &RangeFeed,
    y: &mut [f32],
    r: Range,
) -> Result<Option<FqGate>> {
    let (min, max, non_finite) = if r.poison == 0.0 {
        (r.min, r.max, 0)
    } else {
        // Rare (the observer then refuses the batch): the module's own NaN-aware range and
        // count, so the message and the range are exactly its.
        let (mut min, mut max) = ([f32::INFINITY], [f32::NEG_INFINITY]);
        let bad = fqk::min_max_blocks(Isa::detect(), y, y.len(), &mut min, &mut max);
        (min[0], max[0], bad)
    };
    let Some((scale, zp)) = feed.observe(min, max, non_finite)? else {
        return Ok(None);
    };
    let (lo, hi) = feed.quant_range();
    let gate = FqGate {
        a: Affine::new(scale, zp as f32),
        lo: lo as f32,
        hi: hi as f32,
    };
    let isa = Isa::detect();
    let run = |c: &mut [f32]| fqk::fwd_in_place(isa, c, gate.a, gate.lo, gate.hi);
    if y.len() >= PAR_MIN_ELEMS && rayon::current_num_threads() > 1 {
        y.par_chunks_mut(PAR_MIN_ELEMS / 4).for_each(run);
    } else {
        run(y);
    }
    Ok(Some(gate))
}

#[cfg(test)]
mod tests {
    use super::super::batch_norm::{affine, affine_clamp};
    use super::*;

    /// The write pass equals the kernels it stands in for bit for bit, and its range is the
    /// written values' (poisoned by NaN / Inf), on lengths around the 16-lane blocks.
    #[test]
    fn affine_range_equals_affine_kernels_and_finds_the_range() {
        for len in [1usize, 15, 16, 17, 40, 784] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 77.0)
                .collect();
            for clamp in [None, Some((0f32, 6f32)), Some((0.0, f32::INFINITY))] {
                let (a, b) = (1.37f32, -0.21f32);
                let mut want = vec![MaybeUninit::new(0f32); len];
                match clamp {
                    None => affine(&mut want, &x, a, b),
                    Some((lo, hi)) => affine_clamp(&mut want, &x, a, b, lo, hi),
                }
                // SAFETY: initialized above and overwritten by the kernel.
                let want: Vec<f32> = want.iter().map(|v| unsafe { v.assume_init() }).collect();
                let mut got = vec![MaybeUninit::new(0f32); len];
                let mut r = Range::EMPTY;
                affine_range(&mut got, &x, a, b, clamp, &mut r);
                // SAFETY: as above.
                let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "len {len} clamp {clamp:?}");
                let min = want.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = want.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                assert_eq!((r.min, r.max, r.poison), (min, max, 0.0), "len {len}");
            }
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = x.clone();
                x[len / 2] = bad;
                let mut o = vec![MaybeUninit::new(0f32); len];
                let mut r = Range::EMPTY;
                affine_range(&mut o, &x, 1.0, 0.0, None, &mut r);
                assert!(r.poison.is_nan(), "len {len}: {bad} not flagged");
            }
        }
    }
}
