//! Shared helpers of the GEMM tests: run every ISA this machine supports against the scalar
//! spec (`gemm::reference`) with tolerance 0, and say which ran and which were skipped.

#![allow(dead_code)]

use qat_core::Requant;
use qat_kernels::gemm::{kernel_names, reference, PackedGemm};
use qat_kernels::Isa;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The ISAs to test, printing `SKIPPED <kernel>: no <isa>` for the compiled-in others.
pub fn isas(test: &str) -> Vec<Isa> {
    let mut ran = Vec::new();
    for (isa, name) in kernel_names() {
        if isa.is_supported() {
            ran.push(isa);
        } else {
            eprintln!("{test}: SKIPPED {name}: no {isa} on this CPU");
        }
    }
    eprintln!(
        "{test}: ran {}",
        ran.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    );
    ran
}

/// One GEMM problem.
#[derive(Debug, Clone)]
pub struct Problem {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub lda: usize,
    pub ldc: usize,
    pub a: Vec<u8>,
    pub w: Vec<i8>,
    pub bias: Option<Vec<i32>>,
    pub zp_a: i32,
    pub requant: Vec<Requant>,
}

impl Problem {
    /// Random data; `lda`/`ldc` padded by `pad`; requant scaled to the accumulator range so
    /// that outputs spread over the u8 range rather than all clamping.
    pub fn random(m: usize, k: usize, n: usize, pad: usize, seed: u64) -> Problem {
        let mut rng = StdRng::seed_from_u64(seed);
        let lda = k + pad;
        let ldc = n + pad;
        let a: Vec<u8> = (0..m.saturating_sub(1) * lda + k)
            .map(|_| rng.gen())
            .collect();
        let w: Vec<i8> = (0..n * k).map(|_| rng.gen()).collect();
        let bias = if rng.gen_bool(0.8) {
            Some((0..n).map(|_| rng.gen_range(-100_000..100_000)).collect())
        } else {
            None
        };
        let zp_a = [0, 255, rng.gen_range(0..256)][rng.gen_range(0..3)];
        let mut p = Problem {
            m,
            k,
            n,
            lda,
            ldc,
            a,
            w,
            bias,
            zp_a,
            requant: vec![],
        };
        p.requant = p.spread_requant(&mut rng);
        p
    }

    /// Per-channel requant whose multiplier maps the observed accumulator range onto ~256
    /// steps, with a random output zero point and one of none / ReLU / ReLU6-like bounds.
    pub fn spread_requant(&self, rng: &mut StdRng) -> Vec<Requant> {
        let acc = self.reference_i32();
        (0..self.n)
            .map(|j| {
                let max = (0..self.m)
                    .map(|i| (acc[i * self.n + j] as i64).abs())
                    .max()
                    .unwrap_or(1)
                    .max(1);
                let zp = rng.gen_range(0..256);
                let (qmin, qmax) = match rng.gen_range(0..3) {
                    0 => (0, 255),
                    1 => (zp, 255),
                    _ => (zp, (zp + 60).min(255)),
                };
                Requant {
                    multiplier: (rng.gen_range(100.0..300.0) / max as f64) as f32,
                    zero_point: zp,
                    qmin,
                    qmax,
                }
            })
            .collect()
    }

    pub fn reference_i32(&self) -> Vec<i32> {
        reference::gemm_i32_reference(
            &self.a,
            self.m,
            self.lda,
            &self.w,
            self.n,
            self.k,
            self.bias.as_deref(),
            self.zp_a,
        )
        .unwrap()
    }

    pub fn reference_u8(&self) -> Vec<u8> {
        reference::gemm_u8_reference(
            &self.a,
            self.m,
            self.lda,
            &self.w,
            self.n,
            self.k,
            self.bias.as_deref(),
            self.zp_a,
            &self.requant,
        )
        .unwrap()
    }

    pub fn pack(&self, isa: Isa) -> PackedGemm {
        PackedGemm::new(
            &self.w,
            self.n,
            self.k,
            self.bias.as_deref(),
            self.zp_a,
            &self.requant,
            isa,
        )
        .unwrap()
    }

    /// Both outputs of `isa` on `threads` threads equal the reference exactly, and nothing
    /// outside the M×N window of the strided output is written.
    pub fn check(&self, isa: Isa, threads: usize) {
        let g = self.pack(isa);
        let (m, n, ldc) = (self.m, self.n, self.ldc);
        let len = (m.max(1) - 1) * ldc + n + 3;
        let want_i32 = self.reference_i32();
        let mut got = vec![0x5A5A_5A5Ai32; len];
        g.gemm_i32(&self.a, m, self.lda, &mut got, ldc, threads)
            .unwrap();
        let want_u8 = self.reference_u8();
        let mut got8 = vec![0xA5u8; len];
        g.gemm_u8(&self.a, m, self.lda, &mut got8, ldc, threads)
            .unwrap();
        for i in 0..m {
            for j in 0..ldc {
                let idx = i * ldc + j;
                if idx >= len {
                    continue;
                }
                if j < n {
                    assert_eq!(
                        got[idx],
                        want_i32[i * n + j],
                        "{} i32 ({i}, {j}) of m={m} k={} n={n} zp={} threads={threads}",
                        g.kernel_name(),
                        self.k,
                        self.zp_a
                    );
                    assert_eq!(
                        got8[idx],
                        want_u8[i * n + j],
                        "{} u8 ({i}, {j}) of m={m} k={} n={n} zp={} threads={threads}",
                        g.kernel_name(),
                        self.k,
                        self.zp_a
                    );
                } else {
                    assert_eq!(got[idx], 0x5A5A_5A5A, "{} wrote past n", g.kernel_name());
                    assert_eq!(got8[idx], 0xA5, "{} wrote past n", g.kernel_name());
                }
            }
        }
        assert_eq!(
            got[len - 1],
            0x5A5A_5A5A,
            "{} wrote past the end",
            g.kernel_name()
        );
        assert_eq!(
            got8[len - 1],
            0xA5,
            "{} wrote past the end",
            g.kernel_name()
        );
    }
}
