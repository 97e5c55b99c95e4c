//! Convolution on NHWC u8 activations with i8 weights.

mod geometry;

pub use geometry::Conv2dGeometry;
