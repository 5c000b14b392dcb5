//! The CUDA source of a config and its compilation by NVRTC, cached per
//! config and architecture for the life of the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use super::{CudaError, layout, require_nvrtc};
use crate::KernelConfig;

const COMMON: &str = include_str!("../../cuda/common.cuh");
const READOUT: &str = include_str!("../../cuda/readout.cu");
const STEP: &str = include_str!("../../cuda/step.cu");

/// Kernel entry points, as named in the `.cu` files.
pub(crate) const STEP_KERNEL: &str = "qecd_step";
pub(crate) const STEP_ONE_KERNEL: &str = "qecd_step_one";
pub(crate) const SHOT_KERNEL: &str = "qecd_shot";
pub(crate) const READOUT_KERNEL: &str = "qecd_readout";

/// The complete CUDA C source of the kernels for `config`: its sizes and
/// layouts as `#define`s, then `common.cuh`, `readout.cu` and `step.cu`.
pub fn source_for(config: &KernelConfig) -> Result<String, CudaError> {
    config.validate()?;
    let mut src = format!("// qecd kernels for {config:?}\n");
    src += &layout::defines(config);
    for (name, text) in [("common.cuh", COMMON), ("readout.cu", READOUT), ("step.cu", STEP)] {
        src += &format!("\n// ---- {name} ----\n");
        src += text;
    }
    Ok(src)
}

/// The kernels for `config` compiled to PTX for NVRTC's default virtual
/// architecture (which every GPU the toolkit supports can load). Needs NVRTC
/// only, no GPU; a compile error carries NVRTC's log.
pub fn ptx_for(config: &KernelConfig) -> Result<String, CudaError> {
    Ok(compile(config, None)?.to_src())
}

/// The kernels for `config`, compiled for `arch` (`compute_XY`; `None` for
/// NVRTC's default), from the process-wide cache.
pub(crate) fn compile(config: &KernelConfig, arch: Option<String>) -> Result<Ptx, CudaError> {
    type Cache = Mutex<HashMap<(KernelConfig, Option<String>), Arc<Ptx>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let key = (config.clone(), arch);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(ptx) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok((**ptx).clone());
    }
    let src = source_for(config)?;
    let mut options = vec!["--std=c++17".to_string()];
    options.extend(key.1.iter().map(|a| format!("--gpu-architecture={a}")));
    let ptx = compile_source(&src, options).map_err(|e| match e {
        CudaError::Compile { error, options, log, .. } => {
            CudaError::Compile { config: format!("{config:?}"), error, options, log }
        }
        other => other,
    })?;
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Arc::new(ptx.clone()));
    Ok(ptx)
}

/// Compiles `src` with NVRTC; errors carry the program log.
pub(crate) fn compile_source(src: &str, options: Vec<String>) -> Result<Ptx, CudaError> {
    require_nvrtc()?;
    let opts = CompileOptions { options, name: Some("qecd.cu".into()), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| match e {
        CompileError::CompileError { nvrtc, options, log } => CudaError::Compile {
            config: "a source".into(),
            error: format!("{:?}", nvrtc.0),
            options,
            log: log.to_string_lossy().into_owned(),
        },
        other => CudaError::NoNvrtc(format!("NVRTC failed: {other:?}")),
    })
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); nvrtcVersion writes two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::NoNvrtc(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_has_the_config_and_every_kernel() {
        let config = KernelConfig {
            stabilizers: 24,
            width: 32,
            heads: 4,
            layers: 2,
            ffn_width: 64,
            readout_width: 32,
            observables: 1,
            features: 3,
        };
        let src = source_for(&config).unwrap();
        for needle in ["#define QECD_S 24\n", "#define QECD_NT 256\n", "#define QECD_LDA 33\n", "#define QECD_LDB 97\n"]
        {
            assert!(src.contains(needle), "{needle}");
        }
        for kernel in [STEP_KERNEL, STEP_ONE_KERNEL, SHOT_KERNEL, READOUT_KERNEL] {
            assert!(src.contains(&format!("{kernel}(")), "{kernel}");
        }
        assert!(source_for(&KernelConfig { heads: 5, ..config }).is_err());
    }

    /// Compile errors carry NVRTC's log (when NVRTC is here; see tests/cuda.rs for the full compile).
    #[test]
    fn compile_errors_carry_the_log() {
        if !crate::cuda::nvrtc_available() {
            eprintln!("SKIPPED: libnvrtc not found (put its directory on LD_LIBRARY_PATH)");
            return;
        }
        let err = compile_source("extern \"C\" __global__ void k() { undefined_thing(); }", vec![]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CudaError::Compile { .. }), "{msg}");
        assert!(msg.contains("undefined_thing") && msg.contains("NVRTC_ERROR_COMPILATION"), "{msg}");
    }
}
