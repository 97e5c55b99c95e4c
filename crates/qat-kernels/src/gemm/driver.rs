//! Tiling and threading: walks (row block × weight panel) tiles and calls the microkernel.
//!
//! Loop order: blocks of `MC` rows (their A slice stays in L2), then weight panels (one panel
//! stays in L1/L2 while the tiles of the block stream through it), then `mr`-row tiles. Each
//! output element is computed by exactly one kernel call over the whole K with integer
//! arithmetic, so the result does not depend on the tiling or the number of threads.

use super::kernel::Tile;
use super::pack::{panel_offset, panel_width};
use super::{Out, PackedGemm};
use rayon::prelude::*;
use std::ops::Range;

/// Target size of the A block kept in L2 (the L2 is 1 MiB per core on the reference machine).
const A_BLOCK_BYTES: usize = 256 * 1024;

/// Raw pointers a worker may use: each worker writes a disjoint rectangle of the output.
#[derive(Clone, Copy)]
struct Shared {
    a: *const u8,
    out: Out,
}
// SAFETY: workers only read A and write disjoint output rectangles (see `run`).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// Run the whole M × N output. The caller has validated every length.
pub(crate) fn run(g: &PackedGemm, a: &[u8], m: usize, lda: usize, out: Out, threads: usize) {
    let desc = g.desc();
    let shared = Shared { a: a.as_ptr(), out };
    let panels = g.n.div_ceil(desc.nr);
    let row_tiles = m.div_ceil(desc.mr);
    if threads <= 1 || row_tiles * panels < 2 {
        run_rect(g, shared, lda, 0..m, 0..panels);
        return;
    }
    // Split the dimension with more tiles into `threads` contiguous, tile-aligned parts,
    // computed per part so a call allocates nothing.
    let by_rows = row_tiles >= panels;
    let parts = threads.min(if by_rows { row_tiles } else { panels });
    (0..parts).into_par_iter().for_each(|i| {
        if by_rows {
            let t = split(row_tiles, parts, i);
            let rows = (t.start * desc.mr)..(t.end * desc.mr).min(m);
            run_rect(g, shared, lda, rows, 0..panels);
        } else {
            run_rect(g, shared, lda, 0..m, split(panels, parts, i));
        }
    });
}

/// Part `i` of `0..total` cut into `parts ≤ total` contiguous non-empty ranges.
fn split(total: usize, parts: usize, i: usize) -> Range<usize> {
    (i * total / parts)..((i + 1) * total / parts)
}

/// Compute output rows `rows` × panels `panels`.
fn run_rect(g: &PackedGemm, s: Shared, lda: usize, rows: Range<usize>, panels: Range<usize>) {
    let desc = g.desc();
    let mc = (A_BLOCK_BYTES / g.k.max(1)).max(1).div_ceil(desc.mr) * desc.mr;
    let weights = g.weights.as_ptr().cast::<u8>();
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + mc).min(rows.end);
        for p in panels.clone() {
            let width = panel_width(desc, g.n, p);
            let c0 = p * desc.nr;
            let nc = (g.n - c0).min(desc.nr);
            let mut r = r0;
            while r < r1 {
                let rows_here = (r1 - r).min(desc.mr);
                let out = match s.out {
                    Out::U8 { ptr, ldc } => Out::U8 {
                        ptr: ptr.wrapping_add(r * ldc + c0),
                        ldc,
                    },
                    Out::I32 { ptr, ldc } => Out::I32 {
                        ptr: ptr.wrapping_add(r * ldc + c0),
                        ldc,
                    },
                };
                let tile = Tile {
                    a: s.a.wrapping_add(r * lda),
                    lda,
                    m: rows_here,
                    k: g.k,
                    w: weights.wrapping_add(panel_offset(desc, g.k, p)),
                    width,
                    nc,
                    bias: g.bias[c0..].as_ptr(),
                    multiplier: g.multiplier[c0..].as_ptr(),
                    zero_point: g.zero_point[c0..].as_ptr(),
                    lo: g.lo[c0..].as_ptr(),
                    hi: g.hi[c0..].as_ptr(),
                    requant: g.requant[c0..].as_ptr(),
                    fits_i32: g.fits_i32,
                    packs_only: g.packs_only,
                    out,
                };
                // SAFETY: the caller validated that A holds `m` rows of `lda ≥ k` bytes and the
                // output `m` rows of `ldc ≥ n` elements; the tile covers rows r..r+rows_here < m
                // and columns c0..c0+nc ≤ n. The panel was packed for this kernel with `width`
                // columns and K padded to kr; the parameter arrays hold a whole panel past c0.
                // `desc.run` was chosen for an ISA checked at `PackedGemm::new`.
                unsafe { (desc.run)(&tile) };
                r += rows_here;
            }
        }
        r0 = r1;
    }
}
