//! The portable microkernel: 4 rows × 4 columns, K one at a time, on the packed layout.
//! It runs on any CPU and is the `Isa::Scalar` path; the unpacked spec is `reference.rs`.

use super::kernel::{KernelDesc, Tile};
use super::Out;
use crate::Isa;

pub(crate) static DESC: KernelDesc = KernelDesc {
    name: "scalar_gemm_i32_4x4",
    isa: Isa::Scalar,
    mr: 4,
    nr: 4,
    kr: 1,
    vw: 1,
    wide: false,
    a_xor_128: false,
    run,
};

/// # Safety
/// `t` must describe a valid tile (see [`Tile`]).
unsafe fn run(t: &Tile) {
    let mut acc = [[0i32; 4]; 4];
    for (r, acc_r) in acc.iter_mut().enumerate().take(t.m) {
        // SAFETY: row r < m of A has at least k readable bytes.
        let a = unsafe { std::slice::from_raw_parts(t.a.add(r * t.lda), t.k) };
        for (kk, &av) in a.iter().enumerate() {
            for (j, acc_rj) in acc_r.iter_mut().enumerate().take(t.nc) {
                // SAFETY: kr = 1, so (kk, j) is at kk·width + j < k·width (the panel size).
                let w = unsafe { *t.w.add(kk * t.width + j) } as i8;
                *acc_rj = acc_rj.wrapping_add(av as i32 * w as i32);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(t.m) {
        for (j, &v) in acc_r.iter().enumerate().take(t.nc) {
            // SAFETY: j < nc ≤ the parameter arrays' length past the panel's first column.
            let v = v.wrapping_add(unsafe { *t.bias.add(j) });
            // SAFETY: row r < m, column j < nc: inside the output the driver validated.
            unsafe {
                match t.out_row(r) {
                    Out::U8 { ptr, .. } => *ptr.add(j) = (*t.requant.add(j)).apply(v) as u8,
                    Out::I32 { ptr, .. } => *ptr.add(j) = v,
                }
            }
        }
    }
}
