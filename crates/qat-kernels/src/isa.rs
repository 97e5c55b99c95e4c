//! Instruction sets, detected once at run time and cappable from the environment.
//!
//! `QAT_KERNELS_ISA=<name>` caps the choice: kernels use the best ISA that is both supported by
//! the CPU and not above the cap in the ladder of its architecture
//! (`scalar < avx2 < avxvnni < avx512vnni` on x86-64, `scalar < neon < dotprod < i8mm` on
//! aarch64). Tests pass an explicit [`Isa`] to run every path the machine has.

use std::sync::OnceLock;

/// A kernel family. Each kernel entry point takes one and runs that path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// The portable reference: the spec every other path is tested against.
    Scalar,
    /// x86-64 AVX2 (`vpmaddubsw`-free exact sequence: widen to i16, `vpmaddwd`).
    Avx2,
    /// x86-64 AVX-VNNI (`vpdpbusd` on ymm, VEX-encoded).
    AvxVnni,
    /// x86-64 AVX-512 F/BW/VL + VNNI (`vpdpbusd` on zmm).
    Avx512Vnni,
    /// aarch64 Advanced SIMD.
    Neon,
    /// aarch64 dot product (`sdot` / `udot`).
    Dotprod,
    /// aarch64 int8 matrix multiply (`usmmla` / `smmla`).
    I8mm,
}

impl Isa {
    /// Every ISA, in ladder order.
    pub const ALL: [Isa; 7] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::Dotprod,
        Isa::I8mm,
    ];

    /// The lowercase name used in `QAT_KERNELS_ISA`, logs and benchmark output.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::Dotprod => "dotprod",
            Isa::I8mm => "i8mm",
        }
    }

    /// Parse a name as [`Isa::name`] prints it.
    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s.trim())
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::Dotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            Isa::I8mm => {
                std::arch::is_aarch64_feature_detected!("dotprod")
                    && std::arch::is_aarch64_feature_detected!("i8mm")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every path this CPU can run, scalar first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The best supported ISA at or below `cap` (or the best overall when `cap` is `None`).
pub fn best_below(cap: Option<Isa>) -> Isa {
    Isa::supported()
        .into_iter()
        .filter(|i| cap.is_none_or(|c| *i <= c))
        .max()
        .unwrap_or(Isa::Scalar)
}

/// Why the `QAT_KERNELS_ISA` value could not be used.
pub fn parse_cap(value: &str) -> Result<Isa, String> {
    Isa::from_name(value).ok_or_else(|| {
        let names: Vec<_> = Isa::ALL.iter().map(|i| i.name()).collect();
        format!(
            "QAT_KERNELS_ISA={value:?} is not an ISA; expected one of {}",
            names.join(", ")
        )
    })
}

/// The ISA kernels use by default: detected once, capped by `QAT_KERNELS_ISA`.
///
/// An unknown `QAT_KERNELS_ISA` value is reported once on stderr and ignored (a typo must not
/// silently fall back to scalar and look like a slow machine).
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let cap = match std::env::var("QAT_KERNELS_ISA") {
            Ok(v) => match parse_cap(&v) {
                Ok(isa) => Some(isa),
                Err(msg) => {
                    eprintln!("qat-kernels: {msg}; using the best detected ISA");
                    None
                }
            },
            Err(_) => None,
        };
        best_below(cap)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
        assert!(parse_cap("avx9000").is_err());
    }

    #[test]
    fn cap_is_respected() {
        assert_eq!(best_below(Some(Isa::Scalar)), Isa::Scalar);
        let best = best_below(None);
        assert!(best.is_supported());
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.is_supported() {
            assert_eq!(best_below(Some(Isa::Avx2)), Isa::Avx2);
        }
    }
}
