//! Buffer planning: which buffer ("slot") each value lives in, decided once per model, and the
//! [`Arena`] of buffers sized for one batch size and reused call after call.
//!
//! Values are assigned greedily in plan order: a value takes a free slot of its element type
//! (u8 or f32) when its op runs and gives it back after its last reader, so a chain of ops needs
//! only a few slots however deep the model is. An op's output never shares a slot with its
//! inputs (they are still live while it runs). `Flatten` outputs share their input's slot.

use crate::op::{Node, Op, ValueType};
use crate::{Result, RuntimeError};

/// Element type of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    U8,
    F32,
}

/// The slot assignment of one model.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Value id (0 = model input, `i + 1` = node `i`) → (kind, slot index within the kind).
    pub slot: Vec<(Kind, usize)>,
    /// Elements per sample of each u8 / f32 slot.
    pub u8_sizes: Vec<usize>,
    pub f32_sizes: Vec<usize>,
    /// Elements per sample of the im2col scratch (largest k×k conv).
    pub cols: usize,
    /// Elements per sample of the model input (the NCHW → NHWC staging buffer).
    pub input: usize,
    /// Kernel scratch, the same for every batch size: depthwise bytes, pool i32 sums (the
    /// largest over the steps).
    pub dw_scratch: usize,
    pub pool_sums: usize,
}

fn kind(ty: ValueType) -> Kind {
    match ty {
        ValueType::U8(_) => Kind::U8,
        ValueType::F32 => Kind::F32,
    }
}

impl Plan {
    /// Plan `nodes` (validated by the builder: every input defined earlier) whose inputs are
    /// resolved to value ids in `inputs`; `output` stays live to the end.
    pub fn new(
        input_elems: usize,
        nodes: &[Node],
        inputs: &[Vec<usize>],
        output: usize,
        cols: usize,
    ) -> Plan {
        let nv = nodes.len() + 1;
        let mut root: Vec<usize> = (0..nv).collect();
        let mut elems = vec![input_elems; nv];
        let mut kinds = vec![Kind::U8; nv];
        for (i, n) in nodes.iter().enumerate() {
            elems[i + 1] = n.shape.c * n.shape.h * n.shape.w;
            kinds[i + 1] = kind(n.ty);
            if let Op::Flatten { .. } = n.op {
                root[i + 1] = root[inputs[i][0]];
            }
        }
        // Last node reading each root (usize::MAX = live to the end).
        let mut last = vec![0usize; nv];
        for (i, ins) in inputs.iter().enumerate() {
            for &v in ins {
                last[root[v]] = last[root[v]].max(i);
            }
            // A flatten keeps its root alive as long as itself.
            last[root[i + 1]] = last[root[i + 1]].max(i);
        }
        last[root[output]] = usize::MAX;

        let mut slot = vec![(Kind::U8, 0); nv];
        let mut sizes: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let mut free: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let idx = |k: Kind| if k == Kind::U8 { 0 } else { 1 };
        let take = |v: usize, sizes: &mut [Vec<usize>; 2], free: &mut [Vec<usize>; 2]| {
            let k = idx(kinds[v]);
            // Reuse the free slot closest in size (the largest when none is big enough).
            let pick = free[k]
                .iter()
                .enumerate()
                .min_by_key(|(_, &s)| {
                    let sz = sizes[k][s];
                    if sz >= elems[v] {
                        (0, sz - elems[v])
                    } else {
                        (1, elems[v] - sz)
                    }
                })
                .map(|(i, _)| i);
            let s = match pick {
                Some(i) => free[k].swap_remove(i),
                None => {
                    sizes[k].push(0);
                    sizes[k].len() - 1
                }
            };
            sizes[k][s] = sizes[k][s].max(elems[v]);
            s
        };
        slot[0] = (Kind::U8, take(0, &mut sizes, &mut free));
        for i in 0..nodes.len() {
            let v = i + 1;
            slot[v] = if root[v] != v {
                slot[root[v]]
            } else {
                (kinds[v], take(v, &mut sizes, &mut free))
            };
            for r in 0..nv {
                if root[r] == r && r <= v && last[r] == i {
                    let (k, s) = slot[r];
                    free[idx(k)].push(s);
                }
            }
        }
        let [u8_sizes, f32_sizes] = sizes;
        Plan {
            slot,
            u8_sizes,
            f32_sizes,
            cols,
            input: input_elems,
            dw_scratch: 0,
            pool_sums: 0,
        }
    }
}

/// Buffers for one batch size: allocated once, reused by every call with that batch size.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    pub batch: usize,
    pub u8: Vec<Vec<u8>>,
    pub f32: Vec<Vec<f32>>,
    pub cols: Vec<u8>,
    pub staging: Vec<u8>,
    pub dw_scratch: Vec<u8>,
    pub pool_sums: Vec<i32>,
}

fn sized<T: Clone + Default>(per_sample: usize, batch: usize) -> Result<Vec<T>> {
    let n = per_sample.checked_mul(batch).ok_or_else(|| {
        RuntimeError::Input(format!("batch {batch} × {per_sample} elements overflows"))
    })?;
    let mut v = Vec::new();
    // An allocation the system refuses is an error, not an abort.
    v.try_reserve_exact(n).map_err(|e| {
        RuntimeError::Input(format!(
            "cannot allocate {n} elements for batch {batch}: {e}"
        ))
    })?;
    v.resize(n, T::default());
    Ok(v)
}

impl Arena {
    /// Allocate every slot of `plan` for `batch` samples.
    pub fn new(plan: &Plan, batch: usize) -> Result<Arena> {
        Ok(Arena {
            batch,
            u8: plan
                .u8_sizes
                .iter()
                .map(|&s| sized(s, batch))
                .collect::<Result<_>>()?,
            f32: plan
                .f32_sizes
                .iter()
                .map(|&s| sized(s, batch))
                .collect::<Result<_>>()?,
            cols: sized(plan.cols, batch)?,
            staging: sized(plan.input, batch)?,
            dw_scratch: sized(plan.dw_scratch, 1)?,
            pool_sums: sized(plan.pool_sums, 1)?,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.u8.iter().map(Vec::len).sum::<usize>()
            + 4 * self.f32.iter().map(Vec::len).sum::<usize>()
            + self.cols.len()
            + self.staging.len()
            + self.dw_scratch.len()
            + 4 * self.pool_sums.len()
    }
}
