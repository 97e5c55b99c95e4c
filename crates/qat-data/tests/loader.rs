//! Augmentation against hand computations and the batch loader's guarantees on small synthetic
//! datasets (no IDX files needed).

use std::collections::BTreeSet;
use std::sync::Arc;

use qat_data::{Augment, Dataset, Loader, LoaderConfig, Normalize, Split, Transform};
use rand::SeedableRng;

/// `n` images of `rows × cols`; image `i` has pixel `(r, c)` = `(i + 10 r + c) mod 256`, so
/// each pixel says where it came from.
fn toy(n: usize, rows: usize, cols: usize) -> Dataset {
    let mut images = Vec::with_capacity(n * rows * cols);
    for i in 0..n {
        for r in 0..rows {
            for c in 0..cols {
                images.push(((i + 10 * r + c) % 256) as u8);
            }
        }
    }
    Dataset {
        name: "toy".into(),
        split: Split::Train,
        rows,
        cols,
        images,
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

/// The raw pixel an image index was made from (with [`Normalize::IDENTITY_U8`], first pixel of
/// an un-augmented image is `i mod 256`).
fn first_pixel(b: &qat_data::Batch, k: usize, px: usize) -> u8 {
    b.images[k * px].round() as u8
}

#[test]
fn crop_and_flip_match_a_hand_computation() {
    // 3×3 image 1..=9, pad 1.
    let img: Vec<u8> = (1..=9).collect();
    let aug = Augment::crop_flip(1);
    let mut out = vec![0f32; 9];
    let n = Normalize::IDENTITY_U8;
    let cases: [(Transform, [f32; 9]); 4] = [
        // Identity crop.
        (aug.identity(), [1., 2., 3., 4., 5., 6., 7., 8., 9.]),
        // Top-left corner of the padded image: shifted down-right, zeros in.
        (
            Transform {
                dx: 0,
                dy: 0,
                flip: false,
            },
            [0., 0., 0., 0., 1., 2., 0., 4., 5.],
        ),
        // Bottom-right corner: shifted up-left.
        (
            Transform {
                dx: 2,
                dy: 2,
                flip: false,
            },
            [5., 6., 0., 8., 9., 0., 0., 0., 0.],
        ),
        // Crop at (dx 2, dy 1) then mirror: rows [2 3 0] [5 6 0] [8 9 0] reversed.
        (
            Transform {
                dx: 2,
                dy: 1,
                flip: true,
            },
            [0., 3., 2., 0., 6., 5., 0., 9., 8.],
        ),
    ];
    for (t, want) in cases {
        aug.apply(&img, 3, 3, t, n, &mut out).unwrap();
        // IDENTITY_U8 gives the pixel back up to f32 rounding of /255 then ·255.
        let got: Vec<f32> = out.iter().map(|v| v.round()).collect();
        assert_eq!(got, want, "{t:?}");
        assert!(out.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4));
    }
}

#[test]
fn normalization_is_torchvision_to_tensor_then_normalize() {
    let n = Normalize::new(0.5, 0.25).unwrap();
    assert_eq!(n.apply(0), -2.0);
    assert!((n.apply(255) - 2.0).abs() < 1e-6);
    // Padding pixels are 0 before normalization, as torchvision's RandomCrop(fill=0).
    let mut out = vec![0f32; 1];
    let aug = Augment::crop_flip(1);
    let t = Transform {
        dx: 0,
        dy: 0,
        flip: false,
    };
    aug.apply(&[200], 1, 1, t, n, &mut out).unwrap();
    assert_eq!(out, [-2.0]);
}

#[test]
fn normalization_from_a_dataset_matches_f64() {
    let d = toy(7, 3, 4);
    let n = Normalize::from_dataset(&d).unwrap();
    let v: Vec<f64> = d.images.iter().map(|&p| p as f64 / 255.0).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    assert!((n.mean as f64 - mean).abs() < 1e-6);
    assert!((n.std as f64 - std).abs() < 1e-6);
}

#[test]
fn draws_cover_every_offset_and_both_flips() {
    let aug = Augment::crop_flip(2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let draws: Vec<Transform> = (0..2000).map(|_| aug.draw(&mut rng)).collect();
    let dx: BTreeSet<usize> = draws.iter().map(|t| t.dx).collect();
    let dy: BTreeSet<usize> = draws.iter().map(|t| t.dy).collect();
    assert_eq!(dx, (0..=4).collect());
    assert_eq!(dy, (0..=4).collect());
    let flips = draws.iter().filter(|t| t.flip).count();
    assert!((800..1200).contains(&flips), "{flips} flips of 2000");
    let none = Augment::none();
    assert!((0..100).all(|_| none.draw(&mut rng) == none.identity()));
}

#[test]
fn every_image_exactly_once_per_epoch_in_a_new_order() {
    let d = Arc::new(toy(103, 2, 2));
    let cfg = LoaderConfig {
        batch_size: 10,
        drop_last: false,
        augment: Augment::none(),
        normalize: Normalize::IDENTITY_U8,
        ..LoaderConfig::train(10, 7)
    };
    let loader = Loader::new(d, cfg).unwrap();
    let mut orders = Vec::new();
    for epoch in 0..3 {
        let mut seen = Vec::new();
        for b in loader.epoch(epoch) {
            for (k, &i) in b.indices.iter().enumerate() {
                // The pixels and label really are image i's.
                assert_eq!(first_pixel(&b, k, 4) as usize, i % 256);
                assert_eq!(b.labels[k] as usize, i % 10);
            }
            seen.extend(b.indices);
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, (0..103).collect::<Vec<_>>(), "epoch {epoch}");
        orders.push(seen);
    }
    assert_ne!(orders[0], orders[1]);
    assert_ne!(orders[1], orders[2]);
    assert_ne!(orders[0], (0..103).collect::<Vec<_>>());
}

#[test]
fn drop_last_and_partial_last_batch() {
    let d = Arc::new(toy(25, 2, 2));
    let keep = Loader::new(d.clone(), LoaderConfig::eval(10)).unwrap();
    assert_eq!(keep.batches_per_epoch(), 3);
    assert_eq!(keep.images_per_epoch(), 25);
    let sizes: Vec<usize> = keep.epoch(0).map(|b| b.len()).collect();
    assert_eq!(sizes, [10, 10, 5]);
    // Eval order is the dataset's.
    let idx: Vec<usize> = keep.epoch(0).flat_map(|b| b.indices).collect();
    assert_eq!(idx, (0..25).collect::<Vec<_>>());

    let drop = Loader::new(d, LoaderConfig::train(10, 1)).unwrap();
    assert_eq!(drop.batches_per_epoch(), 2);
    assert_eq!(drop.images_per_epoch(), 20);
    let batches: Vec<_> = drop.epoch(0).collect();
    assert_eq!(batches.len(), 2);
    assert!(batches
        .iter()
        .all(|b| b.len() == 10 && b.images.len() == 40));
}

#[test]
fn same_seed_same_batches_and_background_equals_foreground() {
    let d = Arc::new(toy(50, 6, 6));
    let cfg = LoaderConfig::train(8, 42);
    let a = Loader::new(d.clone(), cfg).unwrap();
    let b = Loader::new(d.clone(), cfg).unwrap();
    let ea: Vec<_> = a.epoch(3).collect();
    let eb: Vec<_> = b.epoch(3).collect();
    assert_eq!(ea, eb);
    for (i, batch) in ea.iter().enumerate() {
        assert_eq!(batch, &a.batch(3, i).unwrap());
    }
    // Another seed: another order and other crops.
    let c = Loader::new(d, LoaderConfig { seed: 43, ..cfg }).unwrap();
    assert_ne!(c.epoch(3).next().unwrap(), ea[0]);
}

#[test]
fn augmentation_is_visible_in_training_batches() {
    // With crop + flip, some training images differ from their plain normalized form.
    let d = Arc::new(toy(40, 6, 6));
    let plain = Loader::new(d.clone(), LoaderConfig::eval(40)).unwrap();
    let p = plain.batch(0, 0).unwrap();
    let aug = Loader::new(
        d,
        LoaderConfig {
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::train(40, 5)
        },
    )
    .unwrap();
    let a = aug.batch(0, 0).unwrap();
    assert_eq!(a.indices, p.indices);
    let changed = (0..40)
        .filter(|k| a.images[k * 36..(k + 1) * 36] != p.images[k * 36..(k + 1) * 36])
        .count();
    assert!(changed > 20, "{changed} of 40 images augmented");
}

#[test]
fn stopping_early_does_not_hang() {
    let d = Arc::new(toy(200, 4, 4));
    let cfg = LoaderConfig {
        prefetch: 1,
        ..LoaderConfig::eval(1)
    };
    let loader = Loader::new(d, cfg).unwrap();
    let mut it = loader.epoch(0);
    assert_eq!(it.len(), 200);
    it.next().unwrap();
    assert_eq!(it.len(), 199);
    drop(it); // joins the worker, which must notice the hang-up
}

#[test]
fn bad_configurations_are_errors() {
    let d = Arc::new(toy(5, 2, 2));
    let err = |cfg: LoaderConfig| Loader::new(d.clone(), cfg).unwrap_err().to_string();
    assert!(err(LoaderConfig::eval(0)).contains("batch_size"));
    assert!(err(LoaderConfig {
        prefetch: 0,
        ..LoaderConfig::eval(2)
    })
    .contains("prefetch"));
    assert!(err(LoaderConfig::train(6, 0)).contains("drop_last"));
    assert!(err(LoaderConfig {
        normalize: Normalize {
            mean: 0.0,
            std: 0.0
        },
        ..LoaderConfig::eval(2)
    })
    .contains("std"));
    let empty = Arc::new(toy(0, 2, 2));
    assert!(Loader::new(empty, LoaderConfig::eval(1))
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let mut broken = toy(3, 2, 2);
    broken.images.pop();
    assert!(Loader::new(Arc::new(broken), LoaderConfig::eval(1))
        .unwrap_err()
        .to_string()
        .contains("pixels"));
    let ok = Loader::new(d, LoaderConfig::eval(2)).unwrap();
    assert!(ok.batch(0, 3).unwrap_err().to_string().contains("batch 3"));
    // A transform outside the policy, and wrong buffer sizes.
    let mut out = [0f32; 4];
    let t = Transform {
        dx: 3,
        dy: 0,
        flip: false,
    };
    assert!(Augment::crop_flip(1)
        .apply(&[0; 4], 2, 2, t, Normalize::MNIST, &mut out)
        .is_err());
    let flip = Transform {
        dx: 0,
        dy: 0,
        flip: true,
    };
    assert!(Augment::none()
        .apply(&[0; 4], 2, 2, flip, Normalize::MNIST, &mut out)
        .is_err());
    assert!(Augment::none()
        .apply(
            &[0; 3],
            2,
            2,
            Augment::none().identity(),
            Normalize::MNIST,
            &mut out
        )
        .is_err());
    assert!(Normalize::new(f32::NAN, 1.0).is_err());
    assert!(Normalize::from_dataset(&toy(0, 2, 2)).is_err());
}
