#!/usr/bin/env python3
"""Measures the llm service's front (`commons-llm`) over a llama.cpp built for the GPU, as a worker runs it.

Starts `commons-llm` on a TCP port with the given llama-server, model and `COMMONS_LLM_GPU_LAYERS`, waits for its
`/health`, then measures through the front (the path the agent's gateway takes):

- load: seconds from start to a 200 from `/health`;
- decode: one chat completion of `--tokens` tokens (`ignore_eos`), tokens per second from the wall clock and from
  llama-server's own timings;
- ttft: time to the first streamed chunk of a one-token answer, p50 and worst of 10;
- parallel: 4 chat completions at once (the front's default `COMMONS_LLM_PARALLEL`), tokens per second together;
- embeddings: one request of 32 inputs, inputs per second and the vector's length;
- gpu: what `nvidia-smi` lists as the servers' GPU memory while they run (when it is there).

Prints one JSON object (and writes it to `--out`). Standard library only: it runs on a bare machine.

usage: llm_gpu.py --llm BIN --llama-server BIN --model FILE [--gpu-layers N] [--tokens N] [--label TEXT]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def post(url, body, timeout=600):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def chat(base, tokens):
    return post(
        f"{base}/v1/chat/completions",
        {
            "model": "bench",
            "max_tokens": tokens,
            "ignore_eos": True,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Tell the volunteers of the pool a long story."}],
        },
    )


def ttft(base):
    body = json.dumps(
        {"model": "bench", "stream": True, "max_tokens": 1, "messages": [{"role": "user", "content": "hello"}]}
    ).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", body, {"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        first = r.readline()
        took = time.perf_counter() - t
        if not first:
            raise RuntimeError("the stream ended before its first chunk")
        r.read()
    return took * 1000


def gpu_memory():
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--llm", required=True, help="the commons-llm binary")
    cli.add_argument("--llama-server", required=True, help="the llama-server binary")
    cli.add_argument("--model", required=True, help="the GGUF model")
    cli.add_argument("--gpu-layers", type=int, default=999)
    cli.add_argument("--tokens", type=int, default=256, help="tokens per decode")
    cli.add_argument("--port", type=int, default=18600)
    cli.add_argument("--label", default="")
    cli.add_argument("--out", help="also write the figures here")
    args = cli.parse_args()

    run = tempfile.mkdtemp(prefix="commons-llm-")
    env = dict(
        os.environ,
        COMMONS_LISTEN=f"127.0.0.1:{args.port}",
        COMMONS_LLM_MODEL=os.path.abspath(args.model),
        COMMONS_LLM_ALIAS="bench",
        COMMONS_LLM_GPU_LAYERS=str(args.gpu_layers),
        COMMONS_LLAMA_SERVER=os.path.abspath(args.llama_server),
        COMMONS_LLM_RUN=run,
    )
    log = open(os.path.join(run, "front.log"), "w")
    base = f"http://127.0.0.1:{args.port}"
    started = time.perf_counter()
    front = subprocess.Popen([args.llm], env=env, stdout=log, stderr=subprocess.STDOUT)
    figures = {"label": args.label, "model": os.path.basename(args.model), "gpu_layers": args.gpu_layers}
    try:
        while True:
            if front.poll() is not None:
                raise RuntimeError(f"commons-llm exited ({front.returncode}): {open(log.name).read()[-3000:]}")
            if time.perf_counter() - started > 300:
                raise RuntimeError("no 200 from /health within 300 s")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        figures["load_s"] = round(time.perf_counter() - started, 2)

        chat(base, 8)  # warm-up
        t = time.perf_counter()
        answer = chat(base, args.tokens)
        wall = time.perf_counter() - t
        n = answer["usage"]["completion_tokens"]
        figures["decode"] = {
            "tokens": n,
            "tokens_per_s_wall": round(n / wall, 1),
            "tokens_per_s_server": round(answer.get("timings", {}).get("predicted_per_second", 0.0), 1),
            "prompt_tokens_per_s_server": round(answer.get("timings", {}).get("prompt_per_second", 0.0), 1),
        }

        firsts = [ttft(base) for _ in range(10)]
        figures["ttft_ms"] = {"p50": round(statistics.median(firsts), 2), "max": round(max(firsts), 2)}

        counts = []

        def one():
            counts.append(chat(base, args.tokens)["usage"]["completion_tokens"])

        threads = [threading.Thread(target=one) for _ in range(4)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        if len(counts) != 4:
            raise RuntimeError(f"{4 - len(counts)} of the 4 parallel requests failed")
        figures["parallel4_tokens_per_s"] = round(sum(counts) / wall, 1)

        inputs = [f"volunteer computer number {i} answers requests" for i in range(32)]
        t = time.perf_counter()
        emb = post(f"{base}/v1/embeddings", {"model": "bench", "input": inputs})
        wall = time.perf_counter() - t
        figures["embeddings"] = {
            "inputs": len(emb["data"]),
            "dims": len(emb["data"][0]["embedding"]),
            "inputs_per_s": round(len(inputs) / wall, 1),
        }
        figures["gpu_memory"] = gpu_memory()
    finally:
        front.terminate()
        try:
            front.wait(30)
        except subprocess.TimeoutExpired:
            front.kill()
        log.close()
        figures["front_exit"] = front.returncode
        tail = open(log.name).read()
        offload = [line.strip() for line in tail.splitlines() if "offloaded" in line or "CUDA" in line]
        figures["server_log"] = offload[:12]
        shutil.rmtree(run, ignore_errors=True)
    print(json.dumps(figures))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    sys.exit(main())
