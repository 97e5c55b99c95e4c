//! The IDX file format (LeCun's MNIST format), raw or gzip-compressed.

use std::io::Read;
use std::path::Path;

use crate::{DataError, Result};

/// A decoded IDX array of unsigned bytes (the only element type MNIST-style files use).
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Read a file whole, decompressing it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::BadIdx {
                path: path.to_path_buf(),
                reason: format!("corrupt or truncated gzip stream: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parse IDX bytes: magic `0 0 0x08 ndim`, big-endian u32 dims, then the u8 payload.
///
/// ```
/// let bytes = [0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9];
/// let a = qat_data::parse_idx(&bytes, std::path::Path::new("x")).unwrap();
/// assert_eq!(a.dims, vec![3]);
/// assert_eq!(a.data, vec![7, 8, 9]);
/// ```
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let bad = |reason: String| DataError::BadIdx {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 4 {
        return Err(bad(format!(
            "{} bytes is too short for a header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "bad magic {:02x}{:02x}{:02x}{:02x}",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(bad("zero dimensions".into()));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!("truncated header ({ndim} dimensions)")));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let payload = &bytes[header..];
    if payload.len() != count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} bytes of data, the file has {}{}",
            payload.len(),
            if payload.len() < count {
                " (truncated)"
            } else {
                ""
            }
        )));
    }
    Ok(IdxArray {
        dims,
        data: payload.to_vec(),
    })
}
