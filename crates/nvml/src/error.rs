//! The errors: each names the GPU by PCI address and NVML's return code by name, and says
//! what to do.

use thiserror::Error;

use crate::code::ReturnCode;
use crate::scheduler::SettingError;

/// A failed NVML operation.
#[derive(Debug, Error)]
pub enum Error {
    /// The library could not be loaded: the host has no NVML. Callers say so and go on.
    #[error(
        "NVML not available ({library} not found): {reason}; without NVML the vGPU scheduler, \
         heterogeneous mode and per-vGPU memory are neither read nor set (install the NVIDIA \
         driver, which ships libnvidia-ml.so.1)"
    )]
    Unavailable {
        /// The library asked for.
        library: String,
        /// The loader's message.
        reason: String,
    },
    /// `nvmlInit_v2` failed.
    #[error("NVML ({library}) did not initialise: nvmlInit_v2 returned {code}: {}", code.fix())]
    Init {
        /// The library.
        library: String,
        /// What `nvmlInit_v2` returned.
        code: ReturnCode,
    },
    /// The library lacks a call gvm-nvml makes.
    #[error("{library} has no {call} (an older NVIDIA driver): update the NVIDIA driver")]
    MissingCall {
        /// The library.
        library: String,
        /// The missing symbol.
        call: &'static str,
    },
    /// A call about the whole host failed.
    #[error("NVML {call} returned {code}: {}", code.fix())]
    System {
        /// The NVML function.
        call: &'static str,
        /// What it returned.
        code: ReturnCode,
    },
    /// A call about one GPU failed.
    #[error("GPU {pci}: {call} returned {code}: {}", code.fix())]
    Call {
        /// The GPU.
        pci: String,
        /// The NVML function.
        call: &'static str,
        /// What it returned.
        code: ReturnCode,
    },
    /// NVML refused a change because vGPUs exist on the GPU (VMs run on it).
    #[error(
        "GPU {pci}: {call} returned {code} while {active} vGPU instance(s) run on the GPU: NVML \
         changes this only while no VM runs on it; shut its VMs down and retry"
    )]
    VmsRunning {
        /// The GPU.
        pci: String,
        /// The NVML function.
        call: &'static str,
        /// What it returned.
        code: ReturnCode,
        /// Active vGPU instances on the GPU.
        active: usize,
    },
    /// A scheduler setting that does not fit the GPU, refused before NVML was called.
    #[error("GPU {pci}: vGPU scheduler setting refused, nothing changed")]
    InvalidSetting {
        /// The GPU.
        pci: String,
        /// What is wrong with it.
        #[source]
        source: SettingError,
    },
    /// A GPU address that is not a PCI address.
    #[error("'{address}' is not a PCI address like 0000:3c:00.0: give the GPU's full address")]
    BadAddress {
        /// What was given.
        address: String,
    },
    /// NVML answered something it does not define.
    #[error("GPU {pci}: {call} answered what NVML does not define: {detail}")]
    Malformed {
        /// The GPU.
        pci: String,
        /// The NVML function.
        call: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    /// Whether the host has no usable NVML (no library, or no driver behind it): callers say
    /// "without NVML" and go on.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unavailable { .. } => true,
            Error::Init { code, .. } => *code == ReturnCode::DRIVER_NOT_LOADED,
            _ => false,
        }
    }

    /// The NVML return code behind the error, if one is.
    pub fn code(&self) -> Option<ReturnCode> {
        match self {
            Error::Init { code, .. }
            | Error::System { code, .. }
            | Error::Call { code, .. }
            | Error::VmsRunning { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_gpu_the_code_and_the_fix() {
        let e = Error::Call {
            pci: "0000:3c:00.0".into(),
            call: "nvmlDeviceGetVgpuSchedulerState",
            code: ReturnCode::NOT_SUPPORTED,
        };
        let m = e.to_string();
        assert!(m.starts_with("GPU 0000:3c:00.0: nvmlDeviceGetVgpuSchedulerState returned NVML_ERROR_NOT_SUPPORTED: "), "{m}");
        assert!(m.contains("vGPU manager"), "{m}");
        assert_eq!(e.code(), Some(ReturnCode::NOT_SUPPORTED));
        assert!(!e.is_unavailable());
    }

    #[test]
    fn no_library_and_no_driver_both_mean_without_nvml() {
        let gone = Error::Unavailable {
            library: "libnvidia-ml.so.1".into(),
            reason: "cannot open shared object file".into(),
        };
        assert!(gone
            .to_string()
            .starts_with("NVML not available (libnvidia-ml.so.1 not found): "));
        assert!(gone.is_unavailable());
        let no_driver = Error::Init {
            library: "libnvidia-ml.so.1".into(),
            code: ReturnCode::DRIVER_NOT_LOADED,
        };
        assert!(no_driver.is_unavailable());
    }
}
