//! The GEMM spec on unpacked data: what every packed kernel must reproduce bit for bit.
//!
//! `acc[i][j] = bias[j] + Σ_k (a[i·lda + k] - zp_a) · w[j·k + k]` in i32 (the caller keeps it
//! in range; [`super::PackedGemm::new`] refuses a K that could overflow), and
//! `out[i][j] = requant[j].apply(acc[i][j])` ([`qat_core::requantize`]).

use crate::error::{check_len, KernelError, Result};
use qat_core::Requant;

/// The i32 accumulators, M×N row-major (`ldc = n`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_i32_reference(
    a: &[u8],
    m: usize,
    lda: usize,
    w: &[i8],
    n: usize,
    k: usize,
    bias: Option<&[i32]>,
    input_zero_point: i32,
) -> Result<Vec<i32>> {
    check_len("reference weights (n·k)", n * k, w.len())?;
    if let Some(b) = bias {
        check_len("reference bias (n)", n, b.len())?;
    }
    if lda < k || (m > 0 && a.len() < (m - 1) * lda + k) {
        return Err(KernelError::Shape(format!(
            "reference A: m = {m}, lda = {lda}, k = {k}, len = {}",
            a.len()
        )));
    }
    let mut out = vec![0i32; m * n];
    for i in 0..m {
        let row = &a[i * lda..i * lda + k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let mut acc = bias.map_or(0, |b| b[j]);
            for (&x, &y) in row.iter().zip(wr) {
                acc = acc.wrapping_add((x as i32 - input_zero_point) * y as i32);
            }
            out[i * n + j] = acc;
        }
    }
    Ok(out)
}

/// The requantized u8 outputs, M×N row-major; `requant` has 1 (shared) or N entries.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8_reference(
    a: &[u8],
    m: usize,
    lda: usize,
    w: &[i8],
    n: usize,
    k: usize,
    bias: Option<&[i32]>,
    input_zero_point: i32,
    requant: &[Requant],
) -> Result<Vec<u8>> {
    if requant.len() != 1 {
        check_len("reference requant (1 or n)", n, requant.len())?;
    }
    if let Some(r) = requant
        .iter()
        .find(|r| r.qmin < 0 || r.qmax > 255 || r.qmin > r.qmax)
    {
        return Err(KernelError::Param(format!(
            "reference u8 output bounds [{}, {}] outside [0, 255]",
            r.qmin, r.qmax
        )));
    }
    let acc = gemm_i32_reference(a, m, lda, w, n, k, bias, input_zero_point)?;
    Ok(acc
        .iter()
        .enumerate()
        .map(|(idx, &v)| {
            let r = if requant.len() == 1 {
                requant[0]
            } else {
                requant[idx % n]
            };
            r.apply(v) as u8
        })
        .collect())
}
