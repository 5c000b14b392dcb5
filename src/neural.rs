//! What training, fine-tuning and calibration share about tch (feature `train`).

use tch::Device;

/// The device training and tch inference use: CUDA when present.
pub fn device() -> Device {
    Device::cuda_if_available()
}

/// A human-readable name of the device.
pub fn device_name(device: Device, threads: usize) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", threads),
        d => format!("{d:?}"),
    }
}
