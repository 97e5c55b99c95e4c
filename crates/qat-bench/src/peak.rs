//! `qat-bench peak`: the throughput of one instruction in a tight loop of independent
//! accumulators (12 chains, enough to cover the latency), on the calling thread.
//!
//! int8: AVX-512 VNNI `vpdpbusd` zmm (64 MAC), AVX-VNNI `vpdpbusd` ymm (32 MAC), AVX2
//! `vpmaddubsw` + `vpmaddwd` + `vpaddd` ymm (32 MAC); aarch64: `sdot` (16 MAC). f32: AVX-512
//! and AVX2 FMA, reported as GFMA/s in `gmacs` for the int8 / f32 ratio.

use crate::json::emit;
use crate::timing::best_seconds;
use serde_json::json;
use std::time::Duration;

/// Arguments of `qat-bench peak`.
#[derive(clap::Args)]
pub struct Args {
    /// Loop iterations per timed call.
    #[arg(long, default_value_t = 1_000_000)]
    iters: u64,
}

struct Probe {
    isa: &'static str,
    instruction: &'static str,
    /// MACs (or FMAs) per loop iteration.
    macs_per_iter: u64,
    supported: fn() -> bool,
    run: unsafe fn(u64),
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    for p in probes() {
        if !(p.supported)() {
            eprintln!(
                "peak: SKIPPED {} ({}): not supported here",
                p.isa, p.instruction
            );
            continue;
        }
        // SAFETY: `supported` checked the CPU features the asm loop uses.
        let s = best_seconds(
            || unsafe { (p.run)(args.iters) },
            5,
            Duration::from_millis(100),
        );
        let gmacs = (args.iters * p.macs_per_iter) as f64 / s / 1e9;
        emit(&[
            ("bench", json!("peak")),
            ("threads", json!(1)),
            ("impl", json!("asm-loop")),
            ("isa", json!(p.isa)),
            ("instruction", json!(p.instruction)),
            ("gmacs", json!((gmacs * 10.0).round() / 10.0)),
            ("ms", json!(s * 1e3)),
        ]);
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn probes() -> Vec<Probe> {
    use x86::*;
    vec![
        Probe {
            isa: "avx512vnni",
            instruction: "vpdpbusd zmm",
            macs_per_iter: 12 * 64,
            supported: || qat_kernels::Isa::Avx512Vnni.is_supported(),
            run: vnni_zmm,
        },
        Probe {
            isa: "avxvnni",
            instruction: "vpdpbusd ymm (VEX)",
            macs_per_iter: 12 * 32,
            supported: || qat_kernels::Isa::AvxVnni.is_supported(),
            run: vnni_ymm,
        },
        Probe {
            isa: "avx2",
            instruction: "vpmaddubsw+vpmaddwd+vpaddd ymm",
            macs_per_iter: 4 * 32,
            supported: || qat_kernels::Isa::Avx2.is_supported(),
            run: avx2_maddubs,
        },
        Probe {
            isa: "avx512f-f32",
            instruction: "vfmadd231ps zmm",
            macs_per_iter: 12 * 16,
            supported: || std::arch::is_x86_feature_detected!("avx512f"),
            run: fma_zmm,
        },
        Probe {
            isa: "avx2-f32",
            instruction: "vfmadd231ps ymm",
            macs_per_iter: 12 * 8,
            supported: || std::arch::is_x86_feature_detected!("fma"),
            run: fma_ymm,
        },
    ]
}

#[cfg(target_arch = "aarch64")]
fn probes() -> Vec<Probe> {
    vec![Probe {
        isa: "dotprod",
        instruction: "sdot .4s",
        macs_per_iter: 12 * 16,
        supported: || qat_kernels::Isa::Dotprod.is_supported(),
        run: arm::sdot,
    }]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    macro_rules! loop12 {
        ($name:ident, $feat:literal, $init:literal, $mn:literal, $p:literal, $($reg:tt)*) => {
            /// # Safety
            /// The CPU must support the instruction (see the probe's `supported`).
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(iters: u64) {
                // SAFETY: register-only arithmetic on clobbered registers; the counter is ours.
                unsafe {
                    asm!(
                        $init,
                        "2:",
                        concat!($mn, " ", $p, "0, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "1, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "2, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "3, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "4, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "5, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "6, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "7, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "8, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "9, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "10, ", $p, "12, ", $p, "13"),
                        concat!($mn, " ", $p, "11, ", $p, "12, ", $p, "13"),
                        "dec {n}",
                        "jnz 2b",
                        n = inout(reg) iters => _,
                        $( out($reg) _, )*
                        options(nostack, nomem),
                    );
                }
            }
        };
    }

    loop12!(vnni_zmm, "avx512f,avx512vnni", "vpxord zmm12, zmm12, zmm12", "vpdpbusd", "zmm",
        "zmm0" "zmm1" "zmm2" "zmm3" "zmm4" "zmm5" "zmm6" "zmm7" "zmm8" "zmm9" "zmm10" "zmm11" "zmm12" "zmm13");
    loop12!(vnni_ymm, "avx2,avxvnni", "vpxor ymm12, ymm12, ymm12", "{{vex}} vpdpbusd", "ymm",
        "ymm0" "ymm1" "ymm2" "ymm3" "ymm4" "ymm5" "ymm6" "ymm7" "ymm8" "ymm9" "ymm10" "ymm11" "ymm12" "ymm13");
    loop12!(fma_zmm, "avx512f", "vpxord zmm12, zmm12, zmm12", "vfmadd231ps", "zmm",
        "zmm0" "zmm1" "zmm2" "zmm3" "zmm4" "zmm5" "zmm6" "zmm7" "zmm8" "zmm9" "zmm10" "zmm11" "zmm12" "zmm13");
    loop12!(fma_ymm, "avx2,fma", "vpxor ymm12, ymm12, ymm12", "vfmadd231ps", "ymm",
        "ymm0" "ymm1" "ymm2" "ymm3" "ymm4" "ymm5" "ymm6" "ymm7" "ymm8" "ymm9" "ymm10" "ymm11" "ymm12" "ymm13");

    /// Four independent `pmaddubsw → pmaddwd(ones) → paddd` chains (32 MAC each).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2_maddubs(iters: u64) {
        // SAFETY: register-only arithmetic on clobbered registers; the counter is ours.
        unsafe {
            asm!(
                "vpxor ymm12, ymm12, ymm12",
                "vpcmpeqw ymm15, ymm15, ymm15",
                "vpsrlw ymm15, ymm15, 15",
                "2:",
                "vpmaddubsw ymm4, ymm12, ymm13",
                "vpmaddubsw ymm5, ymm12, ymm13",
                "vpmaddubsw ymm6, ymm12, ymm13",
                "vpmaddubsw ymm7, ymm12, ymm13",
                "vpmaddwd ymm4, ymm4, ymm15",
                "vpmaddwd ymm5, ymm5, ymm15",
                "vpmaddwd ymm6, ymm6, ymm15",
                "vpmaddwd ymm7, ymm7, ymm15",
                "vpaddd ymm0, ymm0, ymm4",
                "vpaddd ymm1, ymm1, ymm5",
                "vpaddd ymm2, ymm2, ymm6",
                "vpaddd ymm3, ymm3, ymm7",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm12") _, out("ymm13") _, out("ymm15") _,
                options(nostack, nomem),
            );
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::asm;

    /// 12 independent `sdot` chains (16 MAC each).
    ///
    /// # Safety
    /// The CPU must support dotprod.
    #[target_feature(enable = "dotprod")]
    pub unsafe fn sdot(iters: u64) {
        // SAFETY: register-only arithmetic on clobbered registers; the counter is ours.
        unsafe {
            asm!(
                "movi v30.16b, #1",
                "movi v31.16b, #1",
                "2:",
                "sdot v0.4s, v30.16b, v31.16b", "sdot v1.4s, v30.16b, v31.16b",
                "sdot v2.4s, v30.16b, v31.16b", "sdot v3.4s, v30.16b, v31.16b",
                "sdot v4.4s, v30.16b, v31.16b", "sdot v5.4s, v30.16b, v31.16b",
                "sdot v6.4s, v30.16b, v31.16b", "sdot v7.4s, v30.16b, v31.16b",
                "sdot v8.4s, v30.16b, v31.16b", "sdot v9.4s, v30.16b, v31.16b",
                "sdot v10.4s, v30.16b, v31.16b", "sdot v11.4s, v30.16b, v31.16b",
                "subs {n}, {n}, #1",
                "b.ne 2b",
                n = inout(reg) iters => _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
                out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v30") _, out("v31") _,
                options(nostack, nomem),
            );
        }
    }
}
