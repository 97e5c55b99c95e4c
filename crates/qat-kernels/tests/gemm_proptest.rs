//! Random shapes (tract's proptest ranges, extended over several K groups), every ISA this
//! CPU runs, tolerance 0 against the scalar spec.

mod gemm_common;

use gemm_common::{isas, Problem};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_shapes_match_reference(
        m in 1usize..30,
        k in 1usize..120,
        n in 1usize..110,
        pad in 0usize..4,
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        let p = Problem::random(m, k, n, pad, seed);
        for isa in isas("random_shapes_match_reference") {
            p.check(isa, threads);
        }
    }
}
