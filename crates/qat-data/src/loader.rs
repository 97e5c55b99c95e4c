//! Seeded, shuffled, augmented mini-batches prepared on a background thread.
//!
//! Everything random derives from `(seed, epoch)` (the order) and `(seed, epoch, batch)` (the
//! augmentation draws of one batch), never from thread timing, so a run is reproducible and
//! [`Loader::batch`] returns exactly what the background iterator yields.
//!
//! ```
//! use std::sync::Arc;
//! use qat_data::{Dataset, Loader, LoaderConfig, Split};
//! let data = Dataset {
//!     name: "toy".into(), split: Split::Train, rows: 2, cols: 2,
//!     images: (0..20).collect(), labels: vec![0, 1, 2, 3, 4],
//! };
//! let cfg = LoaderConfig { batch_size: 2, ..LoaderConfig::eval(2) };
//! let loader = Loader::new(Arc::new(data), cfg).unwrap();
//! let sizes: Vec<usize> = loader.epoch(0).map(|b| b.labels.len()).collect();
//! assert_eq!(sizes, [2, 2, 1]);
//! ```

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::augment::{Augment, Normalize};
use crate::{DataError, Dataset, Result};

/// How batches are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// A fresh seeded permutation each epoch (else dataset order).
    pub shuffle: bool,
    /// Leave out the last, smaller batch.
    pub drop_last: bool,
    pub augment: Augment,
    pub normalize: Normalize,
    pub seed: u64,
    /// Batches prepared ahead of the consumer (the channel bound).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Training: shuffled, crop (2 px padding) + flip, Fashion-MNIST normalization, last
    /// partial batch dropped, 4 batches ahead.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: true,
            augment: Augment::crop_flip(2),
            normalize: Normalize::FASHION_MNIST,
            seed,
            prefetch: 4,
        }
    }

    /// Evaluation: dataset order, no augmentation, every image (partial last batch kept).
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: false,
            drop_last: false,
            augment: Augment::none(),
            normalize: Normalize::FASHION_MNIST,
            seed: 0,
            prefetch: 4,
        }
    }
}

/// One mini-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `len × 1 × rows × cols`, NCHW, normalized.
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// The dataset index of each image.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True for a batch without images (never yielded by a [`Loader`]).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Batches over a shared dataset.
#[derive(Debug, Clone)]
pub struct Loader {
    data: Arc<Dataset>,
    cfg: LoaderConfig,
}

/// SplitMix64 finalizer: decorrelates the small integers that make up a stream key.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng_for(seed: u64, epoch: u64, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(mix(seed) ^ epoch) ^ stream))
}

impl Loader {
    /// Checks the dataset is non-empty and `batch_size`, `prefetch` are at least 1 (and that
    /// `drop_last` leaves at least one batch).
    pub fn new(data: Arc<Dataset>, cfg: LoaderConfig) -> Result<Self> {
        if data.is_empty() {
            return Err(DataError::Invalid("loader: the dataset is empty".into()));
        }
        if cfg.batch_size == 0 || cfg.prefetch == 0 {
            return Err(DataError::Invalid(format!(
                "loader: batch_size ({}) and prefetch ({}) must be at least 1",
                cfg.batch_size, cfg.prefetch
            )));
        }
        if cfg.drop_last && data.len() < cfg.batch_size {
            return Err(DataError::Invalid(format!(
                "loader: drop_last with batch_size {} leaves no batch of {} images",
                cfg.batch_size,
                data.len()
            )));
        }
        if data.images.len() != data.len() * data.rows * data.cols {
            return Err(DataError::Invalid(format!(
                "loader: {} pixels do not make {} images of {}x{}",
                data.images.len(),
                data.len(),
                data.rows,
                data.cols
            )));
        }
        Normalize::new(cfg.normalize.mean, cfg.normalize.std)?;
        Ok(Loader { data, cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }
    /// The dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.data
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.data.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Images per epoch (after `drop_last`).
    pub fn images_per_epoch(&self) -> usize {
        if self.cfg.drop_last {
            self.batches_per_epoch() * self.cfg.batch_size
        } else {
            self.data.len()
        }
    }

    /// The order in which epoch `epoch` visits the dataset.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut rng_for(self.cfg.seed, epoch, 0));
        }
        order
    }

    /// Batch `index` of epoch `epoch`, made on the calling thread.
    pub fn batch(&self, epoch: u64, index: usize) -> Result<Batch> {
        if index >= self.batches_per_epoch() {
            return Err(DataError::Invalid(format!(
                "loader: batch {index} of an epoch of {} batches",
                self.batches_per_epoch()
            )));
        }
        Ok(make_batch(
            &self.data,
            &self.cfg,
            &self.order(epoch),
            epoch,
            index,
        ))
    }

    /// Every batch of epoch `epoch`, prepared up to `prefetch` ahead on a background thread.
    pub fn epoch(&self, epoch: u64) -> Batches {
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let data = Arc::clone(&self.data);
        let cfg = self.cfg;
        let count = self.batches_per_epoch();
        let order = self.order(epoch);
        let worker = std::thread::spawn(move || {
            for index in 0..count {
                // The consumer hung up (stopped early): nothing left to do.
                if tx
                    .send(make_batch(&data, &cfg, &order, epoch, index))
                    .is_err()
                {
                    return;
                }
            }
        });
        Batches {
            rx: Some(rx),
            worker: Some(worker),
            remaining: count,
        }
    }
}

fn make_batch(
    data: &Dataset,
    cfg: &LoaderConfig,
    order: &[usize],
    epoch: u64,
    index: usize,
) -> Batch {
    let start = index * cfg.batch_size;
    let end = (start + cfg.batch_size).min(order.len());
    let indices = order[start..end].to_vec();
    let px = data.rows * data.cols;
    let mut images = vec![0f32; indices.len() * px];
    let mut rng = rng_for(cfg.seed, epoch, index as u64 + 1);
    for (k, &i) in indices.iter().enumerate() {
        let t = cfg.augment.draw(&mut rng);
        cfg.augment
            .apply(
                data.image(i),
                data.rows,
                data.cols,
                t,
                cfg.normalize,
                &mut images[k * px..(k + 1) * px],
            )
            .expect("a drawn transform of a checked dataset image is valid");
    }
    let labels = indices.iter().map(|&i| data.labels[i] as u32).collect();
    Batch {
        images,
        labels,
        indices,
    }
}

/// The batches of one epoch, in order (an [`Iterator`]); dropping it early stops the worker.
pub struct Batches {
    rx: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for Batches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        match self.rx.as_ref()?.recv() {
            Ok(b) => {
                self.remaining -= 1;
                Some(b)
            }
            Err(_) if self.remaining > 0 => {
                // The worker died before the end: surface its panic instead of a short epoch.
                if let Some(Err(p)) = self.worker.take().map(JoinHandle::join) {
                    std::panic::resume_unwind(p);
                }
                None
            }
            Err(_) => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Batches {}

impl Drop for Batches {
    fn drop(&mut self) {
        // Hang up first so a worker blocked on a full channel wakes and exits.
        self.rx.take();
        if let Some(w) = self.worker.take() {
            // A worker panic is a bug already reported on stderr; don't double-panic here.
            let _ = w.join();
        }
    }
}
