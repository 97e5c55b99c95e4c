//! Edge values for checking every SIMD requantization lane against [`qat_core::requantize`]
//! (gemmlowp's recipe: `±2^i + {-2..2}`, both ends of i32, the f32 mantissa edge `2^24 ± k`,
//! exact `.5` ties, and seeded randoms).

/// One requantization input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Case {
    pub acc: i32,
    pub multiplier: f32,
    pub zp: i32,
    pub qmin: i32,
    pub qmax: i32,
}

fn accumulators() -> Vec<i32> {
    let mut v = vec![0, 1, -1, 3, -3, 5, -5, 7, -7];
    v.extend([
        i32::MIN,
        i32::MIN + 1,
        i32::MIN + 2,
        i32::MAX - 2,
        i32::MAX - 1,
        i32::MAX,
    ]);
    for i in 0..31 {
        for d in -2..=2 {
            let p = (1i64 << i) + d;
            v.push(p as i32);
            v.push((-p) as i32);
        }
    }
    for k in 0..5 {
        for base in [1i64 << 24, 1 << 25] {
            for s in [-1i64, 1] {
                v.push((s * (base + k)) as i32);
                v.push((s * (base - k)) as i32);
            }
        }
    }
    // Seeded xorshift: reproducible without a dependency.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as i32 >> (x % 24));
    }
    v
}

/// Every combination of edge accumulators, multipliers (including exact-tie ones such as 0.5
/// and 0.25, huge and tiny ones) and output zero point / bounds (u8 full, ReLU, ReLU6-like, i8).
pub(crate) fn cases() -> Vec<Case> {
    let multipliers = [
        1.0f32,
        0.5,
        0.25,
        0.1,
        0.0123,
        1e-3,
        3.7,
        255.0,
        1e-9,
        1e30,
        f32::MIN_POSITIVE,
        0.999_999_9,
    ];
    let bounds = [
        (0, 0, 255),
        (128, 0, 255),
        (255, 0, 255),
        (3, 3, 255),
        (3, 3, 123),
        (0, -128, 127),
        (-5, -128, 127),
    ];
    let accs = accumulators();
    let mut out = Vec::with_capacity(accs.len() * multipliers.len() * bounds.len());
    for &(zp, qmin, qmax) in &bounds {
        for &multiplier in &multipliers {
            for &acc in &accs {
                out.push(Case {
                    acc,
                    multiplier,
                    zp,
                    qmin,
                    qmax,
                });
            }
        }
    }
    out
}
