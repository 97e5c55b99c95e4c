//! Set-up shared by the kernel tests: random quantization parameters and operands, a random
//! convolution case with its scalar reference ([`Conv2d::run_reference`]), and the loop over
//! the ISAs this CPU runs (the others reported as skipped, so a CI log shows what ran).

// Each test crate includes this module and uses a part of it.
#![allow(dead_code)]

use std::ops::Range;

use qat_core::QParams;
use qat_kernels::conv::{Conv2d, Conv2dGeometry};
use qat_kernels::{Activation, Isa};
use rand::rngs::StdRng;
use rand::Rng;

/// The fused activations a kernel takes.
pub const ACTS: [Activation; 3] = [Activation::None, Activation::Relu, Activation::Relu6];

/// A random activation of [`ACTS`].
pub fn random_act(rng: &mut StdRng) -> Activation {
    ACTS[rng.gen_range(0..3)]
}

/// A u8 zero point: 0, 255 (the range's ends, where clamps and padding bite) or any.
pub fn random_zero_point(rng: &mut StdRng) -> i32 {
    [0, 255, rng.gen_range(0..=255)][rng.gen_range(0..3)]
}

/// `len` random bytes; `extreme`: only 0 and 255 (the largest products).
pub fn random_bytes(rng: &mut StdRng, len: usize, extreme: bool) -> Vec<u8> {
    (0..len)
        .map(|_| {
            if extreme {
                [0u8, 255][rng.gen_range(0..2)]
            } else {
                rng.gen()
            }
        })
        .collect()
}

/// `len` random weights; `extreme`: only -128 and 127.
pub fn random_weights(rng: &mut StdRng, len: usize, extreme: bool) -> Vec<i8> {
    (0..len)
        .map(|_| {
            if extreme {
                [-128i8, 127][rng.gen_range(0..2)]
            } else {
                rng.gen()
            }
        })
        .collect()
}

/// Run `f` on every ISA this CPU supports, printing `SKIPPED <test> <isa>` for the others.
pub fn for_each_isa(test: &str, mut f: impl FnMut(Isa)) {
    for isa in Isa::ALL {
        if isa.is_supported() {
            f(isa);
        } else {
            println!("SKIPPED {test} {isa}: not supported on this CPU");
        }
    }
}

/// A rayon pool of `threads` threads, for the thread-count invariance tests.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// The first index where `got` and `want` differ (or differ in length).
pub fn first_difference<T: PartialEq>(got: &[T], want: &[T]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or((got.len() != want.len()).then(|| got.len().min(want.len())))
}

/// The distributions a random convolution's parameters are drawn from.
pub struct Draw {
    pub weight_scale: Range<f32>,
    pub output_scale: Range<f32>,
    /// Biases lie in `(-bias, bias)`.
    pub bias: i32,
    /// The probability of a bias at all.
    pub bias_p: f64,
    /// Weights and inputs at the ends of their ranges only.
    pub extreme: bool,
}

/// A random quantized convolution: operands, parameters, input.
#[derive(Clone)]
pub struct ConvCase {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub ci: usize,
    pub co: usize,
    pub groups: usize,
    pub g: Conv2dGeometry,
    pub weights: Vec<i8>,
    pub w_scale: Vec<f32>,
    pub bias: Option<Vec<i32>>,
    pub input_q: QParams,
    pub output_q: QParams,
    pub act: Activation,
    pub x: Vec<u8>,
}

impl ConvCase {
    /// A batch of 1–2 `h × w` images of `channels = (C_in, C_out, groups)`, the rest drawn
    /// from `draw` (zero points by [`random_zero_point`], the input scale in [0.005, 0.05)).
    pub fn random(
        rng: &mut StdRng,
        (ci, co, groups): (usize, usize, usize),
        g: Conv2dGeometry,
        (h, w): (usize, usize),
        draw: &Draw,
    ) -> ConvCase {
        let n = rng.gen_range(1..=2);
        let weights = random_weights(rng, co * (ci / groups) * g.taps(), draw.extreme);
        let x = random_bytes(rng, n * h * w * ci, draw.extreme);
        ConvCase {
            n,
            h,
            w,
            ci,
            co,
            groups,
            g,
            weights,
            w_scale: (0..co)
                .map(|_| rng.gen_range(draw.weight_scale.clone()))
                .collect(),
            bias: rng.gen_bool(draw.bias_p).then(|| {
                (0..co)
                    .map(|_| rng.gen_range(-draw.bias..draw.bias))
                    .collect()
            }),
            input_q: QParams {
                scale: rng.gen_range(0.005..0.05),
                zero_point: random_zero_point(rng),
            },
            output_q: QParams {
                scale: rng.gen_range(draw.output_scale.clone()),
                zero_point: random_zero_point(rng),
            },
            act: random_act(rng),
            x,
        }
    }

    /// The convolution packed for `isa`.
    pub fn conv(&self, isa: Isa) -> Conv2d {
        Conv2d::new(
            self.ci,
            self.co,
            self.groups,
            self.g,
            &self.weights,
            &self.w_scale,
            self.bias.as_deref(),
            self.input_q,
            self.output_q,
            self.act,
            isa,
        )
        .unwrap()
    }

    /// Output bytes `[n][oh][ow][C_out]`.
    pub fn out_len(&self) -> usize {
        let (oh, ow) = self.g.output_hw(self.h, self.w).unwrap();
        self.n * oh * ow * self.co
    }

    /// [`Conv2d::run`] on `isa` and `threads` threads.
    pub fn run(&self, isa: Isa, threads: usize) -> Vec<u8> {
        let mut y = vec![0u8; self.out_len()];
        self.conv(isa)
            .run(&self.x, self.n, self.h, self.w, &mut y, threads)
            .unwrap();
        y
    }

    /// The scalar reference's output.
    pub fn reference(&self) -> Vec<u8> {
        let mut y = vec![0u8; self.out_len()];
        self.conv(Isa::Scalar)
            .run_reference(&self.x, self.n, self.h, self.w, &mut y)
            .unwrap();
        y
    }

    /// The case in one line, for failure messages.
    pub fn describe(&self) -> String {
        let g = &self.g;
        format!(
            "n={} {}x{} ci={} co={} groups={} k={}x{} s={}x{} p={}x{} d={} zp={}/{} {:?}",
            self.n,
            self.h,
            self.w,
            self.ci,
            self.co,
            self.groups,
            g.kernel_h,
            g.kernel_w,
            g.stride_h,
            g.stride_w,
            g.pad_h,
            g.pad_w,
            g.dilation_h,
            self.input_q.zero_point,
            self.output_q.zero_point,
            self.act
        )
    }
}
