//! The depthwise layers of MobileNetV2 — the workload the depthwise kernels are measured on
//! (criterion bench `dwconv`, `qat-bench dwconv`).

/// One 3×3 depthwise layer: channels, square input size, stride (padding 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwLayer {
    /// Which network: `"mnv2_224_w1.0"` or `"mnv2_28_w0.5"`.
    pub net: &'static str,
    pub c: usize,
    pub hw: usize,
    pub stride: usize,
}

impl DwLayer {
    /// Output side length (3×3, padding 1).
    pub const fn out_hw(&self) -> usize {
        (self.hw - 1) / self.stride + 1
    }

    /// Multiply-accumulates per image.
    pub const fn macs(&self) -> usize {
        self.out_hw() * self.out_hw() * self.c * 9
    }
}

const fn l(net: &'static str, c: usize, hw: usize, stride: usize) -> DwLayer {
    DwLayer { net, c, hw, stride }
}

/// The distinct depthwise layers of torchvision's MobileNetV2 at 224×224, width 1.0, and of
/// the project's 1×28×28 width-0.5 variant (first conv stride 1; see the golden model's
/// `config`).
pub const MOBILENET_V2_DW_LAYERS: &[DwLayer] = &[
    l("mnv2_224_w1.0", 32, 112, 1),
    l("mnv2_224_w1.0", 96, 112, 2),
    l("mnv2_224_w1.0", 144, 56, 1),
    l("mnv2_224_w1.0", 144, 56, 2),
    l("mnv2_224_w1.0", 192, 28, 1),
    l("mnv2_224_w1.0", 192, 28, 2),
    l("mnv2_224_w1.0", 384, 14, 1),
    l("mnv2_224_w1.0", 576, 14, 1),
    l("mnv2_224_w1.0", 576, 14, 2),
    l("mnv2_224_w1.0", 960, 7, 1),
    l("mnv2_28_w0.5", 16, 28, 1),
    l("mnv2_28_w0.5", 48, 28, 1),
    l("mnv2_28_w0.5", 96, 28, 1),
    l("mnv2_28_w0.5", 96, 28, 2),
    l("mnv2_28_w0.5", 96, 14, 1),
    l("mnv2_28_w0.5", 96, 14, 2),
    l("mnv2_28_w0.5", 192, 7, 1),
    l("mnv2_28_w0.5", 288, 7, 1),
    l("mnv2_28_w0.5", 288, 7, 2),
    l("mnv2_28_w0.5", 480, 4, 1),
];
