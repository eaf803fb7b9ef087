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

/// Loads libtorch's CUDA half (`libtorch_cuda.so` beside the libtorch the binary was built
/// against) once, when the wheel has it, and says whether it is loaded. It must run before the
/// first CUDA query: its static initialisers register the CUDA hooks that libtorch consults on
/// first use. Commands that never touch a device (metrics, report, check) skip it and start
/// without its ~400 MB.
pub fn load_cuda() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let path = std::path::Path::new(env!("LLAMAGEN_LIBTORCH_LIB")).join("libtorch_cuda.so");
        if !path.is_file() {
            return false;
        }
        let Ok(name) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: dlopen with a NUL-terminated path; the handle is kept for the process's life.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local C string or null.
            let reason = unsafe {
                let e = libc::dlerror();
                if e.is_null() {
                    String::from("unknown error")
                } else {
                    std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            tracing::warn!("CUDA unavailable: cannot load {}: {reason}", path.display());
            return false;
        }
        true
    })
}

/// Whether the NVIDIA kernel driver exposes a device, whatever CUDA itself says.
fn nvidia_device_present() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
}

impl DeviceChoice {
    /// The tch device, checking that a requested GPU exists.
    pub fn resolve(self) -> Result<Device, String> {
        if self != DeviceChoice::Cpu {
            load_cuda();
        }
        match self {
            DeviceChoice::Auto => {
                let device = Device::cuda_if_available();
                if device == Device::Cpu && nvidia_device_present() {
                    tracing::warn!(
                        "an NVIDIA device is present but CUDA is unusable (driver too old for this \
                         libtorch's CUDA runtime?): running on the CPU; see `llamagen-eval doctor`"
                    );
                }
                tracing::info!("--device auto chose {device:?}");
                Ok(device)
            }
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
