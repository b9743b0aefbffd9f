"""Head HTTP endpoint and Python client (label perf), on a cluster started here (head + one node
of 4 CPU devices):
  1. step time of the same job with and without a scraper polling /metrics every 100 ms, in turns
     in one run (the overhead of the endpoint on the head);
  2. the Python client's push-based metrics: steps delivered per second of a job, and the latency
     from the commit (the head's wall-clock stamp) to the Python callback, against the C++ job
     client watching the same jobs at the same time (build/bench/flexsp_bench_job_watch).

    PYTHONPATH=build/python FLEXSP_CLI=build/apps/flexsp/flexsp \
      FLEXSP_JOB_WATCH=build/bench/flexsp_bench_job_watch python3 bench/python/dashboard_bench.py [--quick]
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import flexsp

CLI = os.environ.get("FLEXSP_CLI", "flexsp")
JOB_WATCH = os.environ.get("FLEXSP_JOB_WATCH", "")


def percentile(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


def main():
    quick = "--quick" in sys.argv
    steps, rounds = (8, 1) if quick else (20, 2)
    state = tempfile.mkdtemp(prefix="flexsp-bench-dash-")
    env = dict(os.environ, FLEXSP_STATE_DIR=state)
    os.environ["FLEXSP_STATE_DIR"] = state
    out = subprocess.run([CLI, "start", "--head", "--port", "0", "--dashboard-port", "0"], env=env,
                         capture_output=True, text=True, check=True).stdout
    address = re.search(r"started at (\S+)", out).group(1)
    url = re.search(r"(http://\S+/)", out).group(1)
    subprocess.run([CLI, "start", "--address", address, "--devices", "cpu:4"], env=env, capture_output=True,
                   check=True)
    try:
        client = flexsp.connect(address)
        spec = {"name": "bench", "steps": steps, "batch_size": 32, "model": {"max_seq": 1024}, "calibrate": False,
                "milp": False, "checkpoint": {"dir": "none"}}
        step_ms = {"without": [], "with": []}
        scrapes = [0]
        latencies = []
        rates = []
        cpp_latencies, cpp_rates = [], []
        for _ in range(rounds):
            for mode in ("without", "with"):
                stop = threading.Event()

                def scrape():
                    while not stop.is_set():
                        urllib.request.urlopen(url + "metrics").read()
                        scrapes[0] += 1
                        time.sleep(0.1)

                t = threading.Thread(target=scrape, daemon=True)
                if mode == "with":
                    t.start()
                job = client.submit(spec)
                # The C++ client watches the same job; both count steps 3.. (watching has begun by then).
                watcher = subprocess.Popen([JOB_WATCH, address, job.id], env=env, stdout=subprocess.PIPE,
                                           text=True) if JOB_WATCH else None
                arrivals = []

                def on_metrics(m):
                    now = time.time() * 1000
                    if m["step"] >= 3:
                        arrivals.append(now)
                        latencies.append(now - m["committed_at_ms"])
                    step_ms[mode].append(m["step_ms"])

                final = job.wait(on_metrics)
                if watcher:
                    out_lines = watcher.communicate(timeout=60)[0].split()
                    cpp = [(int(out_lines[i]), float(out_lines[i + 1]), int(out_lines[i + 2]))
                           for i in range(0, len(out_lines), 3)]
                    cpp = [c for c in cpp if c[0] >= 3]
                    cpp_latencies += [now - committed for _, now, committed in cpp]
                    if len(cpp) > 1:
                        cpp_rates.append((len(cpp) - 1) / ((cpp[-1][1] - cpp[0][1]) / 1000))
                stop.set()
                if mode == "with":
                    t.join()
                assert final["state"] == "succeeded", final
                if len(arrivals) > 1:
                    rates.append((len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) / 1000))
        a, b = statistics.mean(step_ms["without"]), statistics.mean(step_ms["with"])
        print(f"## head endpoint overhead: {rounds} x 2 jobs of {steps} steps, 4 CPU devices, GPT 2x64, batch 32")
        print("| scraper | mean step ms | / without |\n|---|---|---|")
        print(f"| none | {a:.1f} | 1.000 |")
        print(f"| /metrics every 100 ms ({scrapes[0]} scrapes) | {b:.1f} | {b / a:.3f} |")
        print("## Pushed metrics: Python client vs the C++ client, watching the same jobs")
        print("| client | steps/s delivered | commit -> callback p50 ms | p90 ms | max ms | p50 / C++ |")
        print("|---|---|---|---|---|---|")
        p50 = percentile(latencies, 0.5)
        cpp_p50 = percentile(cpp_latencies, 0.5) if cpp_latencies else None
        if cpp_latencies:
            print(f"| C++ (job_client) | {statistics.mean(cpp_rates):.1f} | {cpp_p50:.2f} | "
                  f"{percentile(cpp_latencies, 0.9):.2f} | {max(cpp_latencies):.2f} | 1.000 |")
        ratio = f"{p50 / cpp_p50:.3f}" if cpp_p50 else "-"
        print(f"| Python (flexsp) | {statistics.mean(rates):.1f} | {p50:.2f} | {percentile(latencies, 0.9):.2f} | "
              f"{max(latencies):.2f} | {ratio} |")
        if not cpp_latencies:
            print("(no C++ reference: set FLEXSP_JOB_WATCH to build/bench/flexsp_bench_job_watch)")
        print(json.dumps({"bench": "dashboard", "step_ms_without": a, "step_ms_with": b, "ratio": b / a,
                          "python_latency_p50_ms": p50, "python_steps_per_s": statistics.mean(rates),
                          "cpp_latency_p50_ms": cpp_p50,
                          "cpp_steps_per_s": statistics.mean(cpp_rates) if cpp_rates else None}))
    finally:
        subprocess.run([CLI, "stop", "--grace", "3s"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
