//! The candle [`Device`] of a build context: the one mapping from the
//! engine's device name ([`BuildContext::device`], `$ECR_DEVICE`, default
//! `cpu`) to candle's device type.

use crate::error::{NeuralError, Result};
use candle_core::Device;
use ecr_engine::BuildContext;

/// The candle device that `ctx` names ([`BuildContext::device`]).
pub fn device_of(ctx: &BuildContext) -> Result<Device> {
    device_named(&ctx.device())
}

/// The candle device of a device name: `cpu`, `cuda` (GPU 0), `cuda:N`, `metal`
/// or `metal:N`. An unknown name, or a device this build or machine lacks, is
/// an error naming `ECR_DEVICE`.
pub fn device_named(name: &str) -> Result<Device> {
    let bad = |why: String| NeuralError::Invalid(format!("ECR_DEVICE={name:?}: {why}"));
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => {
            let i = i.parse::<usize>().map_err(|_| bad(format!("{i:?} is not a device number")))?;
            (k, i)
        }
        None => (name, 0),
    };
    let unavailable = |e: candle_core::Error| bad(format!("this device is not available ({e}); use ECR_DEVICE=cpu"));
    match kind {
        "cpu" if index == 0 => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(index).map_err(unavailable),
        "metal" => Device::new_metal(index).map_err(unavailable),
        _ => Err(bad("expected cpu, cuda, cuda:N, metal or metal:N".into())),
    }
}

/// The device name of this process for code without a [`BuildContext`]
/// (engine resources): `$ECR_DEVICE`, else `cpu`, as [`BuildContext::device`].
pub fn env_device_name() -> String {
    std::env::var("ECR_DEVICE").ok().filter(|d| !d.is_empty()).unwrap_or_else(|| "cpu".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_devices_and_bad_names_name_the_variable() {
        assert!(device_named("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cpu:1"] {
            let e = device_named(bad).unwrap_err().to_string();
            assert!(e.contains("ECR_DEVICE") && e.contains(bad), "{e}");
        }
        // This build has no CUDA: asking for it is a clear error, not a panic.
        if !candle_core::utils::cuda_is_available() {
            let e = device_named("cuda").unwrap_err().to_string();
            assert!(e.contains("not available") && e.contains("ECR_DEVICE=cpu"), "{e}");
        }
    }
}
