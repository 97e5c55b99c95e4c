//! Fast CPU training ops that candle 0.11 lacks or runs slowly, usable inside candle autograd.
//!
//! Every op is a candle custom op with a fused CPU forward and a backward that is itself a fused
//! custom op, and comes with a `*_slow` twin built from plain candle ops that the tests compare
//! against. All tensors are f32 on the CPU; image tensors are NCHW (`[N, C, H, W]`, as candle's
//! `conv2d` and PyTorch take them), conv weights are PyTorch's `[O, I/groups, KH, KW]`.
//! Inputs with any strides are accepted (they are made contiguous, under autograd); bad shapes,
//! dtypes or devices return an `Err` naming the problem.
//!
//! Kernels are plain loops compiled three times (AVX-512+FMA, AVX2+FMA, baseline) and picked at
//! runtime; big tensors are split over rayon's pool by (image, channel) plane.

mod common;
mod slice_op;

mod activation;
mod batch_norm;
mod bias;
mod channel;
mod conv_bn;
mod conv_prescaled_bn;
mod depthwise;
mod frozen_bn;
mod out_fq;
mod pointwise;
mod prescaled_bn;

pub use activation::{clamp, clamp_slow, relu, relu6, relu6_slow, relu_slow};
pub use batch_norm::{
    batch_norm_act_train, batch_norm_act_train_slow, batch_norm_train, batch_norm_train_slow,
    BatchNormTrainOutput,
};
pub use bias::{bias_add_nchw, bias_add_nchw_slow};
pub use channel::{
    channel_affine_nchw, channel_affine_nchw_slow, channel_div_nchw, channel_div_nchw_slow,
};
pub use conv_bn::{
    conv1x1_bn_act_train, conv1x1_bn_act_train_slow, conv1x1_bn_train, depthwise_bn_act_train,
    depthwise_bn_act_train_slow,
};
pub use conv_prescaled_bn::{
    conv1x1_bn_act_fq_train_prescaled, conv1x1_bn_act_train_prescaled,
    conv_bn_act_fq_train_prescaled_slow, conv_bn_act_train_prescaled_slow,
    depthwise_bn_act_fq_train_prescaled, depthwise_bn_act_train_prescaled,
};
pub use depthwise::{depthwise_conv2d, depthwise_conv2d_dilated, depthwise_conv2d_slow};
pub use frozen_bn::{channel_div_affine_act_nchw, channel_div_affine_act_nchw_slow};
pub use pointwise::{conv1x1, conv1x1_slow};
pub use prescaled_bn::{
    batch_norm_act_fq_train_prescaled, batch_norm_act_fq_train_prescaled_slow,
    batch_norm_act_train_prescaled, batch_norm_act_train_prescaled_slow,
    batch_norm_train_prescaled, batch_norm_train_prescaled_slow,
};
