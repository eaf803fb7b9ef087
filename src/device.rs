//! Devices: the `--device` flag (`auto`, `cpu`, `cuda` or `cuda:N`), what a device is (its name,
//! free memory, the CUDA driver's and runtime's versions) and the process-wide TF32 switch.
//!
//! tch exposes none of the CUDA queries, so they go to the CUDA runtime library that libtorch's
//! CUDA half already loaded (`libcudart`, looked up with `dlopen(RTLD_NOLOAD)`); the TF32 switch
//! goes to ATen's global context through the C++ shim `src/shim/context.cpp`.

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

impl std::fmt::Display for DeviceChoice {
    /// As `--device` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

crate::choice::serde_by_name!(DeviceChoice);

/// The directory of the libtorch this process runs on: where `libtorch_cpu.so` was loaded from
/// (`/proc/self/maps`), which is the build's libtorch unless `LD_LIBRARY_PATH` chose another
/// (a binary built here and run on a machine with its own torch of the same version, see
/// `./x gpu-bundle`); the build's directory when the maps cannot be read.
pub fn libtorch_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        loaded_libtorch_dir().unwrap_or_else(|| env!("LLAMAGEN_LIBTORCH_LIB").into())
    })
    .clone()
}

/// The directory `libtorch_cpu.so` is mapped from, by `/proc/self/maps`.
fn loaded_libtorch_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))?;
    std::path::Path::new(path).parent().map(Into::into)
}

/// Loads libtorch's CUDA half (`libtorch_cuda.so` beside the libtorch the process runs on,
/// [`libtorch_dir`]) once, when the wheel has it, and says whether it is loaded. It must run before the
/// first CUDA query: its static initialisers register the CUDA hooks that libtorch consults on
/// first use. Commands that never touch a device (metrics, report, check) skip it and start
/// without its ~400 MB.
pub fn load_cuda() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let path = libtorch_dir().join("libtorch_cuda.so");
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
pub fn nvidia_device_present() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
}

/// The CUDA runtime (`libcudart`) libtorch loaded, called through its C API.
mod cudart {
    use std::ffi::{c_int, c_void, CStr};
    use std::sync::OnceLock;

    /// The handle of the already loaded runtime (as an address, to be `Sync`), if any.
    fn handle() -> Option<usize> {
        static HANDLE: OnceLock<Option<usize>> = OnceLock::new();
        *HANDLE.get_or_init(|| {
            if !super::load_cuda() {
                return None;
            }
            ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
                .iter()
                .find_map(|name| {
                    let name = std::ffi::CString::new(*name).ok()?;
                    // SAFETY: dlopen with a NUL-terminated name; RTLD_NOLOAD only finds a library
                    // that is already loaded, so nothing new is initialised.
                    let h =
                        unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
                    (!h.is_null()).then_some(h as usize)
                })
        })
    }

    fn symbol(name: &CStr) -> Option<*mut c_void> {
        let h = handle()? as *mut c_void;
        // SAFETY: a valid handle from dlopen and a NUL-terminated name.
        let f = unsafe { libc::dlsym(h, name.as_ptr()) };
        (!f.is_null()).then_some(f)
    }

    /// `cudaDriverGetVersion` / `cudaRuntimeGetVersion`: 1000 * major + 10 * minor.
    pub fn version(driver: bool) -> Option<i32> {
        let name = if driver {
            c"cudaDriverGetVersion"
        } else {
            c"cudaRuntimeGetVersion"
        };
        let f = symbol(name)?;
        // SAFETY: both functions have the signature `cudaError_t (int*)`.
        let f: extern "C" fn(*mut c_int) -> c_int = unsafe { std::mem::transmute(f) };
        let mut v: c_int = 0;
        (f(&mut v) == 0 && v > 0).then_some(v)
    }

    /// Runs `query` with `device` current, restoring the caller's device afterwards.
    fn on_device<T>(device: usize, query: impl FnOnce() -> Option<T>) -> Option<T> {
        let get = symbol(c"cudaGetDevice")?;
        let set = symbol(c"cudaSetDevice")?;
        // SAFETY: `cudaError_t cudaGetDevice(int*)` and `cudaError_t cudaSetDevice(int)`.
        let get: extern "C" fn(*mut c_int) -> c_int = unsafe { std::mem::transmute(get) };
        let set: extern "C" fn(c_int) -> c_int = unsafe { std::mem::transmute(set) };
        let mut previous: c_int = 0;
        if get(&mut previous) != 0 || set(c_int::try_from(device).ok()?) != 0 {
            return None;
        }
        let out = query();
        set(previous);
        out
    }

    /// `cudaMemGetInfo` on `device`: (free, total) bytes.
    pub fn memory(device: usize) -> Option<(u64, u64)> {
        let f = symbol(c"cudaMemGetInfo")?;
        // SAFETY: `cudaError_t cudaMemGetInfo(size_t* free, size_t* total)`.
        let f: extern "C" fn(*mut usize, *mut usize) -> c_int = unsafe { std::mem::transmute(f) };
        on_device(device, || {
            let (mut free, mut total) = (0usize, 0usize);
            (f(&mut free, &mut total) == 0).then_some((free as u64, total as u64))
        })
    }

    /// The marketing name of `device` (`cudaDeviceProp::name`, the struct's first member).
    pub fn name(device: usize) -> Option<String> {
        let f =
            symbol(c"cudaGetDeviceProperties_v2").or_else(|| symbol(c"cudaGetDeviceProperties"))?;
        // SAFETY: `cudaError_t cudaGetDeviceProperties(cudaDeviceProp*, int)`; the buffer is
        // several times larger than the struct in every CUDA version, and `name` is its first
        // member, a NUL-terminated char[256].
        let f: extern "C" fn(*mut u8, c_int) -> c_int = unsafe { std::mem::transmute(f) };
        let mut props = vec![0u8; 16 * 1024];
        if f(props.as_mut_ptr(), c_int::try_from(device).ok()?) != 0 {
            return None;
        }
        let name = CStr::from_bytes_until_nul(&props[..256]).ok()?;
        Some(name.to_string_lossy().trim().to_owned())
    }
}

/// A CUDA version number (`13000`) as `13.0`.
fn cuda_version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Why CUDA is unusable although an NVIDIA device is present, and what to do about it; `None`
/// when CUDA works or no NVIDIA device is present.
pub fn cuda_problem() -> Option<String> {
    if !nvidia_device_present() || (load_cuda() && tch::Cuda::is_available()) {
        return None;
    }
    if !load_cuda() {
        return Some(format!(
            "an NVIDIA device is present but this libtorch ({}) has no CUDA support (a CPU-only \
             torch wheel?): reinstall the project venv with `./x setup` (CUDA wheels are the \
             default on Linux) and rebuild",
            libtorch_dir().display()
        ));
    }
    let runtime = cudart::version(false);
    match (cudart::version(true), runtime) {
        (Some(driver), Some(runtime)) if driver < runtime => Some(format!(
            "an NVIDIA device is present but its driver supports CUDA {} while this libtorch needs \
             CUDA {}: update the NVIDIA driver, or install torch 2.13.0 built for an older CUDA, \
             e.g. `{}=https://download.pytorch.org/whl/cu126 ./x setup`, then rebuild with `./x build`",
            cuda_version_text(driver),
            cuda_version_text(runtime),
            TORCH_INDEX_ENV
        )),
        (None, _) => Some(
            "an NVIDIA device is present but the CUDA driver does not answer (is the driver \
             loaded? does `nvidia-smi` work? inside a container, is the GPU passed through?)"
                .to_owned(),
        ),
        _ => Some(
            "an NVIDIA device is present but libtorch cannot use it (check `nvidia-smi`, \
             CUDA_VISIBLE_DEVICES and the driver version)"
                .to_owned(),
        ),
    }
}

/// The CUDA versions (`12.4`) the driver supports and libtorch's runtime was built for, when a
/// CUDA runtime is loaded.
pub fn cuda_versions() -> (Option<String>, Option<String>) {
    (
        cudart::version(true).map(cuda_version_text),
        cudart::version(false).map(cuda_version_text),
    )
}

/// The variable `./x setup` reads to install torch from another PyTorch wheel index (a CUDA
/// version the machine's driver supports).
pub const TORCH_INDEX_ENV: &str = "LLAMAGEN_TORCH_INDEX";

/// Free bytes on `device` now: the CUDA allocator's view of the GPU, or the kernel's
/// `MemAvailable` for the CPU; `None` when it cannot be told.
pub fn free_memory(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(n) => cudart::memory(n).map(|(free, _)| free),
        Device::Cpu => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        }
        _ => None,
    }
}

/// `cpu`, `cuda:0`, ...: the device as run records name it.
pub fn name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// A device as run records and logs name it: `cuda:0 (NVIDIA H100 80GB HBM3)`,
/// `cpu (AMD EPYC 7B13, 2 threads)`.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(n) => match cudart::name(n) {
            Some(name) => format!("cuda:{n} ({name})"),
            None => format!("cuda:{n}"),
        },
        Device::Cpu => {
            let model = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("model name"))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, v)| v.trim().to_owned())
                });
            let threads = tch::get_num_threads();
            match model {
                Some(model) => format!("cpu ({model}, {threads} threads)"),
                None => format!("cpu ({threads} threads)"),
            }
        }
        other => format!("{other:?}"),
    }
}

/// `--tf32`: whether float32 matrix products and convolutions on CUDA may use TF32 tensor cores
/// (faster, about 1e-3 relative error). Off by default so GPU numbers match CPU and reference
/// runs; libtorch itself allows TF32 in cuDNN convolutions unless told otherwise.
pub fn set_tf32(on: bool) -> Result<(), String> {
    // SAFETY: a C function of the shim that catches every C++ exception.
    let rc = unsafe { llamagen_set_cuda_tf32(i32::from(on)) };
    if rc == 0 {
        Ok(())
    } else {
        Err("libtorch refused to change its TF32 setting".to_owned())
    }
}

/// The TF32 state of CUDA (matrix products, convolutions) as libtorch holds it.
pub fn tf32_state() -> (bool, bool) {
    // SAFETY: C functions of the shim that catch every C++ exception.
    unsafe {
        (
            llamagen_cuda_tf32_matmul() == 1,
            llamagen_cuda_tf32_conv() == 1,
        )
    }
}

extern "C" {
    fn llamagen_set_cuda_tf32(on: i32) -> i32;
    fn llamagen_cuda_tf32_matmul() -> i32;
    fn llamagen_cuda_tf32_conv() -> i32;
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
                let why = match (device, cuda_problem()) {
                    (Device::Cpu, Some(problem)) => {
                        tracing::warn!("{problem}; running on the CPU");
                        "CUDA is unusable"
                    }
                    (Device::Cpu, None) => "no CUDA device",
                    _ => "the first CUDA device",
                };
                tracing::info!("--device auto chose {} ({why})", describe(device));
                Ok(device)
            }
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
                if n < count {
                    tracing::info!("running on {}", describe(Device::Cuda(n)));
                    Ok(Device::Cuda(n))
                } else {
                    let problem = cuda_problem()
                        .map(|p| format!(": {p}"))
                        .unwrap_or_else(|| " (see `llamagen-eval doctor`)".to_owned());
                    Err(format!(
                        "cuda:{n} requested but {count} CUDA device(s) are available{problem}"
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
    fn libtorch_is_found_where_the_process_loaded_it() {
        // Any tensor work has loaded libtorch_cpu by now; here that is the build's libtorch.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, Device::Cpu));
        let dir = loaded_libtorch_dir().expect("libtorch_cpu.so in /proc/self/maps");
        assert!(dir.join("libtorch_cpu.so").is_file(), "{}", dir.display());
        assert_eq!(
            dir.canonicalize().unwrap(),
            std::path::Path::new(env!("LLAMAGEN_LIBTORCH_LIB"))
                .canonicalize()
                .unwrap()
        );
    }

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cpu.resolve(), Ok(Device::Cpu));
    }

    #[test]
    fn tf32_switch_reaches_libtorch() {
        // The flags live in ATen's context in libtorch_cpu: settable and readable without a GPU.
        set_tf32(true).unwrap();
        assert_eq!(tf32_state(), (true, true));
        set_tf32(false).unwrap();
        assert_eq!(tf32_state(), (false, false));
    }

    #[test]
    fn describes_the_cpu_and_its_memory() {
        assert!(describe(Device::Cpu).starts_with("cpu ("));
        assert!(free_memory(Device::Cpu).is_some_and(|b| b > 0));
        assert_eq!(cuda_version_text(12040), "12.4");
        assert_eq!(cuda_version_text(13000), "13.0");
    }
}
