"""The flexsp Python package: the planner, and jobs on a real cluster started by the test."""

import json
import os
import re
import subprocess
import tempfile

import pytest

import flexsp

CLI = os.environ.get("FLEXSP_CLI", "flexsp")


def test_plan_covers_every_sequence_once_and_draws_itself():
    lengths = [512, 16000, 3000, 700, 12000, 64, 9000, 2500]
    p = flexsp.plan(lengths, devices=8, devices_per_node=8)
    assert p.strategy == "flexsp"
    seen = sorted(q for mb in p.micro_batches for g in mb for q in g.sequences)
    assert seen == list(range(len(lengths)))
    for mb in p.micro_batches:
        for g in mb:
            assert g.degree == len(g.devices) >= 1
            assert g.predicted_ms > 0
    assert p.predicted_ms >= p.lower_bound_ms > 0
    assert 0 <= p.gap < 1
    assert p.to_json()["predicted_ms"] == pytest.approx(p.predicted_ms)
    assert "<svg" in p.to_svg()
    cols = flexsp.group_arrays(p)
    assert sum(cols["sequences"]) == len(lengths)
    static = flexsp.plan(lengths, devices=8, strategy="static:8")
    assert static.predicted_ms >= p.predicted_ms * 0.999


def test_planner_errors_are_flexsp_errors_with_the_message():
    with pytest.raises(flexsp.FlexspError, match="cannot fit"):
        flexsp.plan([10_000_000], devices=2)
    with pytest.raises(flexsp.FlexspError, match="profile"):
        flexsp.plan([100], profile="no-such-profile")


@pytest.fixture(scope="module")
def cluster():
    state = tempfile.mkdtemp(prefix="flexsp-py-")
    env = dict(os.environ, FLEXSP_STATE_DIR=state)
    out = subprocess.run([CLI, "start", "--head", "--port", "0", "--dashboard-port", "-1"], env=env,
                         capture_output=True, text=True, check=True).stdout
    address = re.search(r"started at (\S+)", out).group(1)
    subprocess.run([CLI, "start", "--address", address, "--devices", "cpu:2"], env=env, capture_output=True,
                   text=True, check=True)
    old = os.environ.get("FLEXSP_STATE_DIR")
    os.environ["FLEXSP_STATE_DIR"] = state
    yield address
    if old is None:
        del os.environ["FLEXSP_STATE_DIR"]
    else:
        os.environ["FLEXSP_STATE_DIR"] = old
    subprocess.run([CLI, "stop", "--grace", "3s"], env=env, capture_output=True, text=True)


def small_job(steps):
    return {"name": "py", "steps": steps, "batch_size": 8, "model": {"max_seq": 256}, "calibrate": False,
            "checkpoint": {"dir": "none"}}


def test_a_job_submitted_from_python_runs_and_streams_its_metrics(cluster):
    st = flexsp.status(cluster)
    assert st["epoch"] >= 1
    assert [n["devices"] for n in st["nodes"] if n["state"] == "alive"] == [["cpu:0", "cpu:1"]]
    client = flexsp.connect(cluster)
    job = client.submit(small_job(4))
    steps = [m["step"] for m in job.metrics()]
    assert steps == [1, 2, 3, 4]  # numbered as the console numbers them
    final = job.wait()
    assert final["state"] == "succeeded"
    assert final["steps_done"] == 4
    assert final["last_loss"] < final["first_loss"]
    assert any(j["id"] == job.id for j in client.jobs())
    assert client.job(job.id).status()["state"] == "succeeded"
    seen = []
    assert client.submit(small_job(2)).wait(on_metrics=seen.append)["state"] == "succeeded"
    assert len(seen) == 2 and "loss" in seen[0]


def test_a_job_cancelled_from_python_ends_cancelled(cluster):
    client = flexsp.connect()  # the cluster started on this machine
    job = client.submit(small_job(100000))
    for m in job.metrics():
        if m["step"] >= 2:
            job.cancel()
            break
    assert job.wait()["state"] == "cancelled"


def test_bad_specs_and_unknown_jobs_raise_with_the_field_named(cluster):
    client = flexsp.connect(cluster)
    with pytest.raises(flexsp.FlexspError, match="model.d_model"):
        client.submit({"steps": 2, "model": {"d_model": 65, "heads": 4}})
    with pytest.raises(flexsp.FlexspError, match="nope"):
        client.job("nope")
    with pytest.raises(flexsp.FlexspError):
        flexsp.connect("127.0.0.1:1", secret="x").jobs()
