//! # qat-fakequant — fake quantization for candle, with straight-through gradients
