#!/usr/bin/env bash
# Everything that needs a GPU, in one run, from binaries built on another
# machine (a GPU machine here has no crate registry):
#
#   scripts/gpu_check.sh --build    # here: builds and strips into .gpu/
#   scripts/gpu_check.sh OUTDIR     # on the GPU machine: runs from .gpu/
#
# The run: the CUDA numerical tests (kernels/tests/cuda.rs,
# kernels/tests/backend.rs, decoder/tests/neural.rs; --ignored, so they run
# and fail without a GPU rather than skip), scripts/gpu_bench.sh's table, and
# `qecd load` against `qecd serve --device cpu` and `--device cuda` on the
# same machine, one after the other: 64 streams and 1 stream. Logs go to
# OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --build ]; then
  rm -rf .gpu && mkdir -p .gpu
  bins() { grep -o '"executable":"[^"]*"' | sed 's/.*:"//; s/"$//'; }
  cargo test --release -p kernels --features cuda --test cuda --test backend --no-run --message-format=json | bins > .gpu/list
  cargo test --release -p decoder --features kernels/cuda --test neural --no-run --message-format=json | bins >> .gpu/list
  cargo build --release -p kernels --features cuda --example gpu_bench
  cargo build --release --features cuda --bin qecd
  while read -r b; do
    name=$(basename "$b"); cp "$b" ".gpu/${name%-*}"
  done < .gpu/list
  cp target/release/examples/gpu_bench target/release/qecd .gpu/
  strip .gpu/* 2>/dev/null || true
  rm .gpu/list
  du -sh .gpu
  exit 0
fi

out=${1:?usage: scripts/gpu_check.sh --build | OUTDIR}
mkdir -p "$out"
nvidia-smi -L | tee "$out/gpu.txt"
# The tests read fixtures relative to their crate's source folder, where they were built.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }

# NVRTC for cudarc, as scripts/gpu_bench.sh finds it.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c 'import glob,site; print(" ".join(sorted(glob.glob(site.getsitepackages()[0]+"/nvidia/*/lib"))))' 2>/dev/null); do
  if compgen -G "$d/libnvrtc.so*" >/dev/null; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
done

status=0
for t in cuda backend neural; do
  echo "== $t tests" | tee -a "$out/tests.txt"
  args=(--ignored --test-threads 1)
  [ $t = neural ] && args+=(on_cuda)
  (cd "$( [ $t = neural ] && echo decoder || echo kernels )" && "../.gpu/$t" "${args[@]}" --nocapture) >>"$out/tests.txt" 2>&1 || status=1
  tail -3 "$out/tests.txt"
done

echo "== gpu_bench" ; QECD_PREBUILT=1 timeout 240 bash -c 'cp .gpu/gpu_bench target/release/examples/gpu_bench 2>/dev/null || { mkdir -p target/release/examples && cp .gpu/gpu_bench target/release/examples/; }; scripts/gpu_bench.sh --steps 5000' > "$out/gpu_bench.md" 2>&1 || status=1
cat "$out/gpu_bench.md"

load() { # device streams seconds
  local port=$((50100 + RANDOM % 500))
  .gpu/qecd serve --listen 127.0.0.1:$port --device "$1" >"$out/serve-$1-$2.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "gRPC on" "$out/serve-$1-$2.log" && break; sleep 0.2; done
  echo "== qecd serve --device $1, qecd load --streams $2 --seconds $3" | tee -a "$out/load.txt"
  .gpu/qecd load --addr "http://127.0.0.1:$port" --streams "$2" --seconds "$3" >>"$out/load.txt" 2>&1 || status=1
  kill -TERM $pid; wait $pid || true
}
load cpu 64 15; load cuda 64 15; load cpu 1 10; load cuda 1 10
cat "$out/load.txt"
exit $status
