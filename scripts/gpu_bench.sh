#!/usr/bin/env bash
# The CUDA engine on this machine's GPU: correctness against the CPU engine,
# batch-1 round-step latency (p50/p99/p99.9) and batch-1024 throughput for
# d = 3..11, as a markdown table (kernels/examples/gpu_bench.rs).
#
#   scripts/gpu_bench.sh [--wide] [--steps N] [--distances 3,5,7]
#
# Builds the example when cargo can (QECD_PREBUILT=1 skips the build), else
# runs the prebuilt target/release/examples/gpu_bench: a GPU machine without
# a crate registry runs the binary built elsewhere (it loads libcuda and
# libnvrtc at run time, so it needs no CUDA to build). NVRTC (libnvrtc.so.13)
# must be on the loader path; the script adds the usual CUDA and pip
# locations to LD_LIBRARY_PATH when it is not. Without a GPU it exits
# non-zero with "no GPU: ...".
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/examples/gpu_bench
if [ -z "${QECD_PREBUILT:-}" ] && command -v cargo >/dev/null 2>&1; then
  if ! cargo build --release -p kernels --features cuda --example gpu_bench; then
    [ -x "$bin" ] || { echo "gpu_bench: build failed and no prebuilt $bin" >&2; exit 2; }
    echo "gpu_bench: build failed; running the prebuilt $bin (it may be stale)" >&2
  fi
fi
[ -x "$bin" ] || { echo "gpu_bench: $bin is missing (build it with cargo where a registry is reachable)" >&2; exit 2; }

# NVRTC discovery: cudarc dlopens libnvrtc.so / libnvrtc.so.13 by name.
has_nvrtc() {
  ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so' && return 0
  local d path="${LD_LIBRARY_PATH:-}"
  for d in ${path//:/ }; do
    compgen -G "$d/libnvrtc.so*" >/dev/null && return 0
  done
  return 1
}
if ! has_nvrtc; then
  candidates=("${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
  for py in python3 "${VIRTUAL_ENV:-/nonexistent}/bin/python"; do
    if command -v "$py" >/dev/null 2>&1; then
      while IFS= read -r d; do candidates+=("$d"); done < <("$py" - <<'PY' 2>/dev/null || true
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))):
        print(d)
PY
      )
    fi
  done
  for d in "${candidates[@]}"; do
    if compgen -G "$d/libnvrtc.so*" >/dev/null; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "gpu_bench: using NVRTC from $d" >&2
      break
    fi
  done
fi

exec "$bin" "$@"
