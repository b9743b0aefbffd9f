"""Head HTTP endpoint and Python client (label perf), on a cluster started here (head + one node
of 4 CPU devices):
  1. step time of the same job with and without a scraper polling /metrics every 100 ms, in turns
     in one run (the overhead of the endpoint on the head);
  2. the Python client's push-based metrics: steps delivered per second of a job, and the latency
     from the commit (the head's wall-clock stamp) to the Python callback.

    PYTHONPATH=build/python FLEXSP_CLI=build/apps/flexsp/flexsp python3 bench/python/dashboard_bench.py [--quick]
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
                arrivals = []

                def on_metrics(m):
                    now = time.time() * 1000
                    arrivals.append(now)
                    latencies.append(now - m["committed_at_ms"])
                    step_ms[mode].append(m["step_ms"])

                final = job.wait(on_metrics)
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
        lat = sorted(latencies)
        print("## Python client (pushed metrics)")
        print("| steps/s delivered | latency p50 ms | p90 ms | max ms |\n|---|---|---|---|")
        print(f"| {statistics.mean(rates):.1f} | {lat[len(lat) // 2]:.2f} | {lat[int(len(lat) * 0.9)]:.2f} | {lat[-1]:.2f} |")
        print(json.dumps({"bench": "dashboard", "step_ms_without": a, "step_ms_with": b, "ratio": b / a,
                          "python_latency_p50_ms": lat[len(lat) // 2], "python_steps_per_s": statistics.mean(rates)}))
    finally:
        subprocess.run([CLI, "stop", "--grace", "3s"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
