//! What training, fine-tuning and calibration share about tch (feature `train`).

use tch::Device;

/// The device training and tch inference use: CUDA when present.
pub fn device() -> Device {
    Device::cuda_if_available()
}
