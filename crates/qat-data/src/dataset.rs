//! Finding, verifying and decoding MNIST-style datasets.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::idx::{parse_idx, read_maybe_gz};
use crate::{DataError, Result};

/// Which half of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// A dataset this crate knows: where to get it and what its files must contain.
struct Known {
    name: &'static str,
    url: &'static str,
    debian_package: Option<&'static str>,
    /// (file stem, sha256 of the decoded content)
    files: [(&'static str, &'static str); 4],
}

const KNOWN: [Known; 2] = [
    Known {
        name: "fashion-mnist",
        url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        debian_package: Some("dataset-fashion-mnist"),
        files: [
            (
                "train-images-idx3-ubyte",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            (
                "train-labels-idx1-ubyte",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            (
                "t10k-images-idx3-ubyte",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            (
                "t10k-labels-idx1-ubyte",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ],
    },
    Known {
        name: "mnist",
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/",
        debian_package: None,
        files: [
            (
                "train-images-idx3-ubyte",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            (
                "train-labels-idx1-ubyte",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            (
                "t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            (
                "t10k-labels-idx1-ubyte",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ],
    },
];

fn known(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.name == name)
}

/// Images (`n × rows × cols` bytes) and labels of one split.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub split: Split,
    pub rows: usize,
    pub cols: usize,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }

    /// Keep only the first `n` examples (quick runs, tests).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.truncate(n * self.rows * self.cols);
    }

    /// Images as f32 `(pixel / 255 - mean) / std`, in the dataset's order (N×1×H×W).
    pub fn normalized(&self, mean: f32, std: f32) -> Vec<f32> {
        self.images
            .iter()
            .map(|&p| (p as f32 / 255.0 - mean) / std)
            .collect()
    }
}

/// The directories searched for dataset `name`, in order: `data_dir` (used as given, and
/// as `data_dir/<name>`), `$QAT_DATA_DIR/<name>`, `./data/<name>`, `../shared/data/<name>`,
/// `/usr/share/datasets/<name>` (where Debian's `dataset-fashion-mnist` installs).
pub fn search_path(name: &str, data_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = data_dir {
        dirs.push(d.to_path_buf());
        dirs.push(d.join(name));
    }
    if let Some(d) = std::env::var_os("QAT_DATA_DIR") {
        dirs.push(PathBuf::from(d).join(name));
    }
    dirs.push(PathBuf::from("data").join(name));
    dirs.push(PathBuf::from("../shared/data").join(name));
    dirs.push(PathBuf::from("/usr/share/datasets").join(name));
    dirs
}

fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

fn how_to_get(name: &str) -> String {
    match known(name) {
        Some(k) => {
            let mut s = String::new();
            if let Some(pkg) = k.debian_package {
                s += &format!(
                    "On Debian: `apt-get install {pkg}` (installs /usr/share/datasets/{name}).\n"
                );
            }
            s += &format!(
                "Or download these four files from {} into a folder and pass it with --data-dir or \
                 $QAT_DATA_DIR/{name} (sha256 of the decompressed content):\n",
                k.url
            );
            for (stem, sum) in k.files {
                s += &format!("  {stem}.gz  {sum}\n");
            }
            s
        }
        None => format!("{name:?} is not a dataset this loader knows (mnist, fashion-mnist)"),
    }
}

/// Load one split of `name` (`"fashion-mnist"` or `"mnist"`), searching [`search_path`],
/// reading `.gz` or raw IDX files, verifying the known checksums and the shapes.
pub fn load(name: &str, split: Split, data_dir: Option<&Path>) -> Result<Dataset> {
    let dirs = search_path(name, data_dir);
    let images_stem = format!("{}-images-idx3-ubyte", split.prefix());
    let labels_stem = format!("{}-labels-idx1-ubyte", split.prefix());
    let found = dirs
        .iter()
        .find_map(|d| Some((find_file(d, &images_stem)?, find_file(d, &labels_stem)?)));
    let Some((images_path, labels_path)) = found else {
        return Err(DataError::NotFound {
            name: name.to_string(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            how_to_get: how_to_get(name),
        });
    };
    let images = read_verified(name, &images_path, &images_stem)?;
    let labels = read_verified(name, &labels_path, &labels_stem)?;
    from_idx(name, split, &images_path, images, &labels_path, labels)
}

fn read_verified(name: &str, path: &Path, stem: &str) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    if let Some(k) = known(name) {
        if let Some((_, want)) = k.files.iter().find(|(s, _)| *s == stem) {
            let got = hex(&Sha256::digest(&bytes));
            if got != *want {
                return Err(DataError::Checksum {
                    path: path.to_path_buf(),
                    got,
                    expected: want.to_string(),
                });
            }
        }
    }
    Ok(bytes)
}

/// Build a dataset from decoded IDX image and label files, checking they agree.
pub fn from_idx(
    name: &str,
    split: Split,
    images_path: &Path,
    images: Vec<u8>,
    labels_path: &Path,
    labels: Vec<u8>,
) -> Result<Dataset> {
    let images = parse_idx(&images, images_path)?;
    let labels = parse_idx(&labels, labels_path)?;
    if images.dims.len() != 3 {
        return Err(DataError::BadIdx {
            path: images_path.to_path_buf(),
            reason: format!("images must have 3 dimensions, got {:?}", images.dims),
        });
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        return Err(DataError::BadIdx {
            path: labels_path.to_path_buf(),
            reason: format!(
                "labels {:?} do not match {} images",
                labels.dims, images.dims[0]
            ),
        });
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l > 9) {
        return Err(DataError::BadIdx {
            path: labels_path.to_path_buf(),
            reason: format!("label {bad} is not a class 0..=9"),
        });
    }
    Ok(Dataset {
        name: name.to_string(),
        split,
        rows: images.dims[1],
        cols: images.dims[2],
        images: images.data,
        labels: labels.data,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
