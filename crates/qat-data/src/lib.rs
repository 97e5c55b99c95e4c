//! # qat-data — MNIST-style datasets
//!
//! Finds MNIST / Fashion-MNIST in the usual places, decodes IDX files (raw or `.gz`),
//! verifies the official checksums, and says exactly how to get the data when it is missing.
//!
//! ```no_run
//! use qat_data::{load, Split};
//! let test = load("fashion-mnist", Split::Test, None)?;
//! assert_eq!((test.len(), test.rows, test.cols), (10_000, 28, 28));
//! # Ok::<(), qat_data::DataError>(())
//! ```

mod augment;
mod dataset;
mod error;
mod idx;
mod loader;

pub use augment::{Augment, Normalize, Transform};
pub use dataset::{from_idx, load, search_path, Dataset, Split};
pub use error::{DataError, Result};
pub use idx::{parse_idx, read_maybe_gz, IdxArray};
pub use loader::{Batch, Batches, Loader, LoaderConfig};
