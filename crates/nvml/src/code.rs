//! NVML's return codes by name, and what to do about each.

use std::fmt;

use nvml_wrapper::error::NvmlError as WrapperError;
use nvml_wrapper_sys::bindings::nvmlReturn_t;
use serde::Serialize;

/// An `nvmlReturn_t` that is not `NVML_SUCCESS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct ReturnCode(pub nvmlReturn_t);

impl ReturnCode {
    /// `NVML_ERROR_INVALID_ARGUMENT`.
    pub const INVALID_ARGUMENT: ReturnCode = ReturnCode(2);
    /// `NVML_ERROR_NOT_SUPPORTED`.
    pub const NOT_SUPPORTED: ReturnCode = ReturnCode(3);
    /// `NVML_ERROR_NOT_FOUND`.
    pub const NOT_FOUND: ReturnCode = ReturnCode(6);
    /// `NVML_ERROR_INSUFFICIENT_SIZE`.
    pub const INSUFFICIENT_SIZE: ReturnCode = ReturnCode(7);
    /// `NVML_ERROR_DRIVER_NOT_LOADED`.
    pub const DRIVER_NOT_LOADED: ReturnCode = ReturnCode(9);
    /// `NVML_ERROR_IN_USE`.
    pub const IN_USE: ReturnCode = ReturnCode(19);
    /// `NVML_ERROR_ARGUMENT_VERSION_MISMATCH`.
    pub const ARGUMENT_VERSION_MISMATCH: ReturnCode = ReturnCode(25);
    /// `NVML_ERROR_UNKNOWN`.
    pub const UNKNOWN: ReturnCode = ReturnCode(999);

    /// The code nvml-wrapper's error stands for, when it stands for one (and not for a
    /// failure of the wrapper itself, such as a string that is not UTF-8).
    pub fn of_wrapper(e: WrapperError) -> Option<ReturnCode> {
        match e {
            WrapperError::Utf8Error(_)
            | WrapperError::NulError(_)
            | WrapperError::LibloadingError(_)
            | WrapperError::FailedToLoadSymbol(_)
            | WrapperError::StringTooLong { .. }
            | WrapperError::IncorrectBits(_)
            | WrapperError::SetReleaseFailed
            | WrapperError::GetPciInfoFailed
            | WrapperError::PciInfoToCFailed => None,
            nvml => Some(ReturnCode(nvmlReturn_t::from(nvml))),
        }
    }

    /// The name `nvml.h` gives the code (`NVML_ERROR_NOT_SUPPORTED`), or `None` for a code
    /// newer than this list.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "NVML_SUCCESS",
            1 => "NVML_ERROR_UNINITIALIZED",
            2 => "NVML_ERROR_INVALID_ARGUMENT",
            3 => "NVML_ERROR_NOT_SUPPORTED",
            4 => "NVML_ERROR_NO_PERMISSION",
            5 => "NVML_ERROR_ALREADY_INITIALIZED",
            6 => "NVML_ERROR_NOT_FOUND",
            7 => "NVML_ERROR_INSUFFICIENT_SIZE",
            8 => "NVML_ERROR_INSUFFICIENT_POWER",
            9 => "NVML_ERROR_DRIVER_NOT_LOADED",
            10 => "NVML_ERROR_TIMEOUT",
            11 => "NVML_ERROR_IRQ_ISSUE",
            12 => "NVML_ERROR_LIBRARY_NOT_FOUND",
            13 => "NVML_ERROR_FUNCTION_NOT_FOUND",
            14 => "NVML_ERROR_CORRUPTED_INFOROM",
            15 => "NVML_ERROR_GPU_IS_LOST",
            16 => "NVML_ERROR_RESET_REQUIRED",
            17 => "NVML_ERROR_OPERATING_SYSTEM",
            18 => "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
            19 => "NVML_ERROR_IN_USE",
            20 => "NVML_ERROR_MEMORY",
            21 => "NVML_ERROR_NO_DATA",
            22 => "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED",
            23 => "NVML_ERROR_INSUFFICIENT_RESOURCES",
            24 => "NVML_ERROR_FREQ_NOT_SUPPORTED",
            25 => "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
            26 => "NVML_ERROR_DEPRECATED",
            27 => "NVML_ERROR_NOT_READY",
            28 => "NVML_ERROR_GPU_NOT_FOUND",
            29 => "NVML_ERROR_INVALID_STATE",
            30 => "NVML_ERROR_RESET_TYPE_NOT_SUPPORTED",
            999 => "NVML_ERROR_UNKNOWN",
            _ => return None,
        })
    }

    /// What to do about the code, for the end of an error message.
    pub fn fix(self) -> &'static str {
        match self.0 {
            1 | 2 | 7 => "gvm-nvml called NVML wrongly: report it as a bug",
            3 => {
                "the GPU does not offer this: it is not in vGPU host mode (NVIDIA's vGPU \
                 manager is not loaded for it), MIG is enabled on it, or it is too old"
            }
            4 => "run as root",
            6 => "no such GPU or vGPU: check the address with `nvidia-smi -q` or `lspci -d 10de:`",
            9 => "load the NVIDIA kernel driver (`modprobe nvidia`)",
            12 | 13 | 25 | 26 => {
                "this libnvidia-ml.so.1 does not match what gvm-nvml was built for: update the \
                 NVIDIA driver"
            }
            15 => "the GPU fell off the bus: check `dmesg`, then reset the GPU or reboot",
            16 => "reset the GPU (`nvidia-smi -r`) or reboot",
            18 => "the NVIDIA kernel module and libnvidia-ml.so.1 differ: reload the driver",
            19 => "the GPU is in use: stop the VMs on it and retry",
            _ => "see NVML's reference for this call",
        }
    }
}

impl fmt::Display for ReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "NVML return code {}", self.0),
        }
    }
}

impl From<ReturnCode> for String {
    fn from(c: ReturnCode) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_in_nvml_h() {
        assert_eq!(
            ReturnCode::NOT_SUPPORTED.to_string(),
            "NVML_ERROR_NOT_SUPPORTED"
        );
        assert_eq!(
            ReturnCode::ARGUMENT_VERSION_MISMATCH.to_string(),
            "NVML_ERROR_ARGUMENT_VERSION_MISMATCH"
        );
        assert_eq!(ReturnCode(4242).to_string(), "NVML return code 4242");
    }

    #[test]
    fn wrapper_errors_keep_their_code_even_when_the_wrapper_does_not_know_it() {
        assert_eq!(
            ReturnCode::of_wrapper(WrapperError::NotSupported),
            Some(ReturnCode::NOT_SUPPORTED)
        );
        // nvml-wrapper has no variant for NVML_ERROR_ARGUMENT_VERSION_MISMATCH.
        assert_eq!(
            ReturnCode::of_wrapper(WrapperError::UnexpectedVariant(25)),
            Some(ReturnCode::ARGUMENT_VERSION_MISMATCH)
        );
        assert_eq!(
            ReturnCode::of_wrapper(WrapperError::FailedToLoadSymbol("x".into())),
            None
        );
    }
}
