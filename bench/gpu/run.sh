#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU and CUDA's compiler but no container engine and no network:
#   1. the agent's NVML path: `commons-agent detect` on the real GPU, idle and while the llm service holds it;
#   2. the llm service's front (`commons-llm`) over a llama-server built here with ggml's CUDA backend, all layers
#      on the GPU, against the same on the CPU (bench/gpu/llm_gpu.py measures).
#
# usage: bench/gpu/run.sh DIR OUT
#   DIR holds commons-agent and commons-llm (built on the development machine) and llama.cpp.tgz (a llama.cpp
#   source tree); OUT receives detect-*.json, build.log, figures.jsonl and run.log.
# Each step's time is printed; the CUDA build is for this GPU's architecture only (nvidia-smi's compute_cap).
set -uo pipefail
dir=$(realpath "$1")
out=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d /tmp/commons-gpu.XXXXXX)
step() { printf '\n== %s (%(%T)T, +%ss)\n' "$1" -1 "$SECONDS"; }

# The agent links libdbus (the keyring's Secret Service); DIR/lib may hold it and its libraries, used only when the
# machine lacks them.
agent() {
    if ldd "$dir/commons-agent" | grep -q "not found"; then
        LD_LIBRARY_PATH="$dir/lib" "$dir/commons-agent" "$@"
    else
        "$dir/commons-agent" "$@"
    fi
}

step "the GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')

step "commons-agent detect (NVML), idle"
agent detect --json --credentials-file "$work/credentials" >"$out/detect-idle.json"
echo "exit $?"
agent detect --credentials-file "$work/credentials"

step "llama-server with ggml's CUDA backend, sm_$cap"
tar xzf "$dir/llama.cpp.tgz" -C "$work"
(
    cd "$work/llama.cpp" &&
        cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$cap" \
            -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_CUDA_NCCL=OFF &&
        ninja -C build llama-server
) >"$out/build.log" 2>&1
rc=$?
tail -3 "$out/build.log"
server="$work/llama.cpp/build/bin/llama-server"
[ $rc = 0 ] && [ -x "$server" ] || { echo "the CUDA build failed ($rc)"; tail -40 "$out/build.log"; exit 1; }

step "models (random weights: the tests' tiny one, and a 0.8-billion-parameter f16 body)"
export PYTHONPATH="$work/llama.cpp/gguf-py"
python3 "$here/../../tests/models/tiny_gguf.py" "$work/tiny.gguf"
python3 "$here/../../tests/models/tiny_gguf.py" "$work/body.gguf" --embd 2048 --heads 16 --layers 16 --ff 5632 --f16
ls -la "$work"/*.gguf

bench() { python3 "$here/llm_gpu.py" --llm "$dir/commons-llm" --llama-server "$server" --out "$out/figures.jsonl" "$@"; }

step "llm on the GPU: the 0.8B body, all layers"
bench --model "$work/body.gguf" --gpu-layers 999 --tokens 256 --label gpu &
pid=$!
# While the servers hold the GPU, the agent's NVML reading should see its memory in use.
for _ in $(seq 60); do
    nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -q . && break
    sleep 1
done
sleep 3
agent detect --json --credentials-file "$work/credentials" >"$out/detect-busy.json"
wait $pid || echo "the GPU run failed"

step "llm on the GPU: the tests' tiny model"
bench --model "$work/tiny.gguf" --gpu-layers 999 --tokens 256 --label gpu-tiny || echo "the tiny GPU run failed"

step "llm on the CPU: the 0.8B body, no layer on the GPU"
bench --model "$work/body.gguf" --gpu-layers 0 --tokens 32 --label cpu || echo "the CPU run failed"

step "done"
rm -rf "$work"
