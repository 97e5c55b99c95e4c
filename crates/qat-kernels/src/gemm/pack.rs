//! Weight packing into a kernel's panel layout (described on [`KernelDesc`]).

use super::kernel::KernelDesc;

/// 64-byte aligned storage so that panels start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct CacheLine(pub [u8; 64]);
const _: () = assert!(std::mem::size_of::<CacheLine>() == 64);

/// K padded to the kernel's group depth.
pub(crate) fn padded_k(desc: &KernelDesc, k: usize) -> usize {
    k.div_ceil(desc.kr) * desc.kr
}

/// Width of panel `p` for `n` columns: `nr`, except the last one, rounded up to `vw`.
pub(crate) fn panel_width(desc: &KernelDesc, n: usize, p: usize) -> usize {
    let left = n - p * desc.nr;
    left.min(desc.nr).div_ceil(desc.vw) * desc.vw
}

/// Byte offset of panel `p` (every earlier panel is full width).
pub(crate) fn panel_offset(desc: &KernelDesc, k: usize, p: usize) -> usize {
    p * desc.nr * padded_k(desc, k) * elem_size(desc)
}

fn elem_size(desc: &KernelDesc) -> usize {
    if desc.wide {
        2
    } else {
        1
    }
}

/// Pack N×K row-major weights; padding (K to `kr`, the last panel to its width) is zero.
pub(crate) fn pack_weights(desc: &KernelDesc, w: &[i8], n: usize, k: usize) -> Vec<CacheLine> {
    let kp = padded_k(desc, k);
    let panels = n.div_ceil(desc.nr);
    let last = panels - 1;
    let total = panel_offset(desc, k, last) + panel_width(desc, n, last) * kp * elem_size(desc);
    let mut lines = vec![CacheLine([0; 64]); total.div_ceil(64)];
    // SAFETY: CacheLine is repr(C) plain bytes; the slice covers exactly the allocation.
    let bytes: &mut [u8] = unsafe {
        std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), lines.len() * 64)
    };
    for p in 0..panels {
        let width = panel_width(desc, n, p);
        let base = panel_offset(desc, k, p);
        for j in 0..width.min(n - p * desc.nr) {
            let col = p * desc.nr + j;
            for (kk, &v) in w[col * k..(col + 1) * k].iter().enumerate() {
                let (g, t) = (kk / desc.kr, kk % desc.kr);
                let idx = (g * width + j) * desc.kr + t;
                if desc.wide {
                    bytes[base + 2 * idx..base + 2 * idx + 2]
                        .copy_from_slice(&(v as i16).to_ne_bytes());
                } else {
                    bytes[base + idx] = v as u8;
                }
            }
        }
    }
    lines
}
