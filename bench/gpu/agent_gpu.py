#!/usr/bin/env python3
"""The agent's GPU path end to end, on a machine with an NVIDIA GPU: NVML -> heartbeat -> coordinator -> admin API,
and the hold on a GPU hotter than the volunteer's limit.

Starts a coordinator on loopback (no DHT, 2 s heartbeats) and the headless agent against it (no containers, no DHT,
`max_gpu_temp_c = 40`, the lowest a volunteer can set), then loads the GPU with PyTorch matrix products for
`--load-secs` seconds and watches for `--watch-secs` in all (default twice the load): every 2 s, the worker's GPU figures as the admin API lists
them, its status there, and what the agent itself says holds it back (`commons-agent status --json`). Writes each
reading as a JSON line to OUT/agent-gpu.jsonl and prints a summary; the logs go to OUT/coordinator.log and
OUT/agent.log. Standard library only (PyTorch for the load, when python3 has it).

usage: agent_gpu.py --bin DIR --out OUT [--load-secs N] [--watch-secs N]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

TOKEN = "gpu-check-admin-token-0123456789"
PORT = 18080
LOAD = """
import sys, time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
"""


def admin(path):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", headers={"authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--bin", required=True, help="the folder with commons-coordinator and commons-agent")
    cli.add_argument("--out", required=True)
    cli.add_argument("--load-secs", type=float, default=30)
    cli.add_argument("--watch-secs", type=float, help="default: twice --load-secs")
    args = cli.parse_args()
    bins = os.path.abspath(args.bin)
    out = os.path.abspath(args.out)
    work = tempfile.mkdtemp(prefix="commons-agent-gpu-")
    env = dict(os.environ, COMMONS_ADMIN_TOKEN=TOKEN, NO_COLOR="1", RUST_LOG="info")
    if os.path.isdir(os.path.join(bins, "lib")):
        missing = subprocess.run(["ldd", os.path.join(bins, "commons-agent")], capture_output=True, text=True)
        if "not found" in missing.stdout:
            env["LD_LIBRARY_PATH"] = os.path.join(bins, "lib")
    procs = []
    coordinator = subprocess.Popen(
        [
            os.path.join(bins, "commons-coordinator"),
            "--listen",
            f"127.0.0.1:{PORT}",
            "--data-dir",
            os.path.join(work, "coordinator"),
            "--no-dht",
            "--heartbeat-interval",
            "2",
        ],
        env=env,
        stdout=open(os.path.join(out, "coordinator.log"), "w"),
        stderr=subprocess.STDOUT,
    )
    procs.append(coordinator)
    settings = os.path.join(work, "agent.toml")
    with open(settings, "w") as f:
        f.write(f'coordinator_url = "http://127.0.0.1:{PORT}"\ncontainers = false\ndht = false\nmax_gpu_temp_c = 40\n')
    agent_args = [
        os.path.join(bins, "commons-agent"),
        "--config",
        settings,
        "--credentials-file",
        os.path.join(work, "credentials.json"),
        "--control-socket",
        os.path.join(work, "agent.sock"),
    ]
    lines = open(os.path.join(out, "agent-gpu.jsonl"), "w")
    try:
        for _ in range(100):
            try:
                admin("/api/admin/workers")
                break
            except OSError:
                time.sleep(0.1)
        agent = subprocess.Popen(
            agent_args + ["run"], env=env, stdout=open(os.path.join(out, "agent.log"), "w"), stderr=subprocess.STDOUT
        )
        procs.append(agent)
        time.sleep(4)
        load = subprocess.Popen([sys.executable, "-c", LOAD, str(args.load_secs)])
        procs.append(load)
        started = time.time()
        readings = []
        while time.time() - started < (args.watch_secs or 2 * args.load_secs):
            time.sleep(2)
            workers = admin("/api/admin/workers")["workers"]
            status = subprocess.run(agent_args + ["status", "--json"], env=env, capture_output=True, text=True)
            try:
                mine = json.loads(status.stdout)
            except ValueError:
                mine = {"error": status.stdout + status.stderr}
            w = workers[0] if workers else {}
            reading = {
                "t": round(time.time() - started, 1),
                "loading": load.poll() is None,
                "workers": len(workers),
                "tier": w.get("tier"),
                "status": w.get("status"),
                "gpus": [(g.get("name"), g.get("vram_bytes")) for g in (w.get("capabilities") or {}).get("gpus", [])],
                "gpu_samples": w.get("gpu_samples"),
                "services": w.get("services"),
                "agent_state": mine.get("state"),
                "held": (mine.get("session") or {}).get("held"),
            }
            readings.append((reading, w))
            lines.write(json.dumps(reading) + "\n")
            lines.flush()
            print(json.dumps(reading)[:400])
        # The whole worker as the admin API lists it, at the peak of the load.
        with open(os.path.join(out, "worker.json"), "w") as f:
            json.dump(readings[len(readings) // 4][1], f, indent=1)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        lines.close()


if __name__ == "__main__":
    sys.exit(main())
