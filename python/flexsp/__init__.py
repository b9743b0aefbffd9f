"""flexsp from Python: plan batches with the FlexSP planner, and submit, watch and cancel training
jobs on a running flexsp cluster.

    import flexsp
    p = flexsp.plan([512, 40000, 3000, 700], devices=8)
    p.predicted_ms, p.micro_batches[0][0].degree, p.to_svg()

    client = flexsp.connect("127.0.0.1:7400")            # secret: the local cluster's, or secret_file=
    job = client.submit({"steps": 30, "model": {"preset": "llama-tiny"}})
    for m in job.metrics():                               # dicts, as steps commit
        print(m["step"], m["loss"])
    job.wait()["state"]                                   # "succeeded"

Errors raise flexsp.FlexspError with the same message as the C++ API and the CLI.
"""

import json
import queue
import threading

from . import _flexsp


class FlexspError(RuntimeError):
    """A flexsp call failed; the message says what and names the field or peer."""


_flexsp._set_error_type(FlexspError)

Plan = _flexsp.Plan
Group = _flexsp.Group


def plan(lengths, devices=8, devices_per_node=0, profile="gpt-7b", strategy="flexsp", time_limit_ms=1000.0,
         milp=False, mem_limit_gb=0.0):
    """Plans one batch of sequence `lengths` (tokens) on `devices` devices: a Plan with
    `micro_batches` (lists of Group: degree, devices, sequences, predicted_ms, memory_mb),
    `predicted_ms`, `lower_bound_ms`, `gap`, `to_json()` and `to_svg()`. `profile` is a built-in
    name (gpt-7b, gpt-13b, gpt-30b) or a profile JSON file; `strategy` flexsp, static:D or batchada."""
    return _flexsp.plan([int(x) for x in lengths], int(devices), int(devices_per_node), str(profile), str(strategy),
                        float(time_limit_ms), bool(milp), float(mem_limit_gb))


def group_arrays(p):
    """The plan's groups as columns (lists, or numpy arrays when numpy is installed): micro_batch,
    degree, sequences (count) and predicted_ms per group."""
    cols = {"micro_batch": [], "degree": [], "sequences": [], "predicted_ms": []}
    for i, mb in enumerate(p.micro_batches):
        for g in mb:
            cols["micro_batch"].append(i)
            cols["degree"].append(g.degree)
            cols["sequences"].append(len(g.sequences))
            cols["predicted_ms"].append(g.predicted_ms)
    try:
        import numpy
        return {k: numpy.asarray(v) for k, v in cols.items()}
    except ImportError:
        return cols


class Job:
    """A submitted job: `status()`, `metrics()` (an iterator of step dicts as they commit),
    `wait(on_metrics=None)` and `cancel()`."""

    def __init__(self, client, job_id):
        self._client = client
        self.id = job_id

    def status(self, logs=False):
        """The job's state, steps and losses (and its log with logs=True)."""
        d = self._client.query(self.id, 1 << 62, logs)
        d.pop("metrics", None)
        return d

    def metrics(self):
        """Yields each committed step's metrics dict, from the first, as the head pushes them,
        until the job ends (a thread waits on the job; the iterator reads its queue)."""
        items = queue.Queue()
        end = object()

        def run():
            try:
                self._client.wait(self.id, items.put)
            except BaseException as e:  # handed to the iterating thread
                items.put(e)
            items.put(end)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        while True:
            m = items.get()
            if m is end:
                break
            if isinstance(m, BaseException):
                raise m
            yield m
        t.join()

    def wait(self, on_metrics=None):
        """Waits until the job ends, calling on_metrics(dict) for each committed step as the head
        pushes it; returns the final status."""
        d = self._client.wait(self.id, on_metrics)
        d.pop("metrics", None)
        return d

    def cancel(self):
        self._client.cancel(self.id)

    def __repr__(self):
        return f"<flexsp.Job {self.id}>"


class Client:
    """A connection to a cluster's head (the job API)."""

    def __init__(self, native, address):
        self._native = native
        self.address = address

    def submit(self, spec):
        """Submits a job spec (a dict, as the JSON job spec) and returns its Job."""
        text = spec if isinstance(spec, str) else json.dumps(spec)
        return Job(self._native, self._native.submit_json(text))

    def job(self, job_id):
        """A handle on an existing job."""
        self._native.query(job_id, 1 << 62, False)
        return Job(self._native, job_id)

    def jobs(self):
        """Every job's status."""
        return self._native.list()


def connect(address=None, secret=None, secret_file=None):
    """Connects to the head at "host:port" (default: the cluster started on this machine)."""
    address, secret = _flexsp._resolve(address or "", secret or "", secret_file or "")
    native = _flexsp._connect(address, secret)
    return Client(native, address)


def status(address=None, secret=None, secret_file=None):
    """The cluster's membership: epoch and nodes (id, address, state, devices)."""
    address, secret = _flexsp._resolve(address or "", secret or "", secret_file or "")
    return _flexsp._cluster_status(address, secret)


__all__ = ["FlexspError", "Plan", "Group", "plan", "group_arrays", "connect", "status", "Client", "Job"]
