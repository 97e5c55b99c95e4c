//! The loader on small IDX fixtures made here, corrupt ones included, and on the real data.

use std::io::Write;
use std::path::Path;

use qat_data::{load, DataError, Split};

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write_split(dir: &Path, prefix: &str, images: Vec<u8>, labels: Vec<u8>, compress: bool) {
    for (kind, bytes) in [("images-idx3", images), ("labels-idx1", labels)] {
        let (name, bytes) = if compress {
            (format!("{prefix}-{kind}-ubyte.gz"), gz(&bytes))
        } else {
            (format!("{prefix}-{kind}-ubyte"), bytes)
        };
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn tiny_images(n: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..n * 4).map(|i| (i * 37 % 256) as u8).collect();
    idx(&[n, 2, 2], &data)
}

#[test]
fn reads_gz_and_raw_fixtures() {
    for compress in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        write_split(
            dir.path(),
            "t10k",
            tiny_images(3),
            idx(&[3], &[1, 2, 9]),
            compress,
        );
        let d = load("tiny", Split::Test, Some(dir.path())).unwrap();
        assert_eq!((d.len(), d.rows, d.cols), (3, 2, 2));
        assert_eq!(d.labels, vec![1, 2, 9]);
        assert_eq!(d.image(1), &[148, 185, 222, 3]);
        let x = d.normalized(0.5, 0.25);
        assert!((x[0] - (0.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
    }
}

fn load_err(images: Vec<u8>, labels: Vec<u8>, compress: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), "train", images, labels, compress);
    match load("tiny", Split::Train, Some(dir.path())) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("corrupt fixture loaded"),
    }
}

#[test]
fn corrupt_files_are_clear_errors() {
    let labels = idx(&[3], &[0, 1, 2]);
    let mut truncated = tiny_images(3);
    truncated.truncate(truncated.len() - 1);
    assert!(load_err(truncated, labels.clone(), false).contains("truncated"));
    let mut bad_magic = tiny_images(3);
    bad_magic[0] = 7;
    assert!(load_err(bad_magic, labels.clone(), false).contains("bad magic"));
    let mut bad_type = tiny_images(3);
    bad_type[2] = 0x0d;
    assert!(load_err(bad_type, labels.clone(), true).contains("element type"));
    assert!(load_err(tiny_images(3), idx(&[2], &[0, 1]), false).contains("do not match"));
    assert!(load_err(tiny_images(3), idx(&[3], &[0, 1, 10]), false).contains("not a class"));
    assert!(load_err(idx(&[3, 4], &[0; 12]), labels.clone(), false).contains("3 dimensions"));
    assert!(load_err(vec![0, 0], labels.clone(), false).contains("too short"));

    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), "train", tiny_images(3), labels, true);
    let p = dir.path().join("train-images-idx3-ubyte.gz");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&p, bytes).unwrap();
    let e = load("tiny", Split::Train, Some(dir.path())).unwrap_err();
    assert!(e.to_string().contains("gzip"), "{e}");
}

#[test]
fn checksums_of_known_datasets_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), "t10k", tiny_images(2), idx(&[2], &[0, 1]), true);
    let e = load("mnist", Split::Test, Some(dir.path())).unwrap_err();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"));
}

#[test]
fn missing_dataset_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(
        "fashion-mnist",
        Split::Train,
        Some(&dir.path().join("nowhere")),
    );
    // The real data may be found in a later search-path entry; only judge the error form.
    if let Err(e) = e {
        let msg = e.to_string();
        assert!(
            msg.contains("apt-get install dataset-fashion-mnist"),
            "{msg}"
        );
        assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
        assert!(msg.contains("nowhere"), "{msg}");
    }
    let e = load("no-such-set", Split::Train, Some(dir.path())).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }));
}

#[test]
fn real_fashion_mnist_loads_and_verifies() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let dir = std::env::var_os("QAT_DATA_DIR")
        .map(Into::into)
        .unwrap_or(shared);
    if !dir.join("fashion-mnist").is_dir() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("fashion-mnist not found under {}", dir.display());
        }
        eprintln!(
            "SKIPPED real_fashion_mnist_loads_and_verifies: no data at {}",
            dir.display()
        );
        return;
    }
    let d = load("fashion-mnist", Split::Test, Some(&dir)).unwrap();
    assert_eq!((d.len(), d.rows, d.cols), (10_000, 28, 28));
    let mut counts = [0usize; 10];
    for &l in &d.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
}
