//! The `--device` flag: `auto`, `cpu`, `cuda` or `cuda:N`.

use std::str::FromStr;

use tch::Device;

/// A device choice as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else the CPU.
    #[default]
    Auto,
    /// The CPU, even when a GPU is present.
    Cpu,
    /// CUDA device `N` (`cuda` alone is device 0); [`DeviceChoice::resolve`] refuses a missing one.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl DeviceChoice {
    /// The tch device, checking that a requested GPU exists.
    pub fn resolve(self) -> Result<Device, String> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
                if n < count {
                    Ok(Device::Cuda(n))
                } else {
                    Err(format!(
                        "cuda:{n} requested but {count} CUDA device(s) are available (see `llamagen-eval doctor`)"
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cpu.resolve(), Ok(Device::Cpu));
    }
}
