"""The fuzzing driver (svmsim/fuzz/driver.py) and every campaign for a bounded
time (issue 13, items 2-4).  Each campaign runs a few hypothesis-drawn inputs
(hypothesis controls the campaign's random source, so a failure shrinks to a
minimal input) and a few seconds through ``svmsim fuzz``."""
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from svmsim.fuzz import driver
from svmsim.fuzz.cli import NAMES

CAMPAIGNS = driver.load_all()


# -- the driver, on toy campaigns -----------------------------------------------------------------
class Toy(driver.Campaign):
    """Fails when its byte string holds 0x42; hangs on 0x99; raises on 0x77."""
    name = "toy"
    case_timeout = 1.0

    def generate(self, rnd):
        return {"data": bytes(rnd.randrange(256) for _ in range(64)), "n": rnd.randrange(100)}

    def execute(self, inp):
        if 0x99 in inp["data"]:
            while True:
                pass
        if 0x77 in inp["data"]:
            return {}["missing"]
        if 0x42 in inp["data"]:
            raise driver.Failure("found 0x42")
        return "fine"


def test_check_classifies_outcomes_failures_exceptions_and_hangs():
    t = Toy()
    assert driver.check(t, {"data": b"\x01", "n": 0}).outcome == "fine"
    assert driver.check(t, {"data": b"\x42", "n": 0}).failure == "found 0x42"
    v = driver.check(t, {"data": b"\x77", "n": 0})
    assert v.failure.startswith("exception KeyError") and "Traceback" in v.detail
    v = driver.check(t, {"data": b"\x99", "n": 0}, timeout=0.3)
    assert v.failure.startswith("hang")


def test_a_failure_shrinks_to_a_minimal_reproducer():
    t = Toy()
    inp = {"data": bytes(range(30, 90)), "n": 77}
    small = driver.shrink(t, inp, "found 0x42", budget_s=30)
    assert small == {"data": b"\x42", "n": 0}


def test_worker_saves_reproducers_and_replay_runs_them(tmp_path, monkeypatch):
    monkeypatch.setitem(driver.CAMPAIGNS, "toy", Toy)
    monkeypatch.setattr(driver, "load_all", lambda: driver.CAMPAIGNS)
    res = driver.work("toy", {}, seconds=60, worker=0, workers=1, seed=0, out_dir=str(tmp_path),
                      max_inputs=12, shrink_s=2)
    assert res["inputs"] == 12 and res["failures"]
    rep = driver.merge("toy", 0, [res], 1.0)
    assert rep["failures"] == len(res["failures"]) and rep["findings"]
    files = sorted(tmp_path.glob("toy-*.json"))
    assert files
    saved = json.loads(files[0].read_text())
    assert saved["campaign"] == "toy" and "input" in saved
    v = driver.replay(str(files[0]))
    assert v.failure == saved["failure"]


def test_inputs_round_trip_through_json():
    value = {"a": b"\x00\xff", "b": [1, b"x", {"c": "d"}], "e": None}
    assert driver.decode(json.loads(json.dumps(driver.encode(value)))) == value


def test_every_campaign_is_registered():
    assert set(NAMES) == set(CAMPAIGNS)


# -- every campaign, bounded (CI) -------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(rnd=st.randoms(use_true_random=False))
def test_campaign_inputs_keep_the_invariants(name, rnd):
    camp = CAMPAIGNS[name]()
    inp = camp.generate(rnd)
    v = driver.check(camp, inp)
    assert not v.failure, f"{name}: {v.failure}\n{v.detail}\ninput: {driver.encode(inp)!r}"


def test_svmsim_fuzz_command_runs_two_workers_and_merges(tmp_path, capsys):
    from svmsim.cli import main
    status = main(["fuzz", "loader", "--time", "3", "--workers", "2", "--seed", "7",
                   "--out", str(tmp_path)])
    err = capsys.readouterr().err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert status == 0, err
    assert rep["workers"] == 2 and rep["inputs"] >= 2 and rep["failures"] == 0
    assert "svmsim fuzz loader:" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_campaign_for_five_seconds(tmp_path, name):
    """CI's bounded campaign run: ``svmsim fuzz NAME --time 5`` finds nothing."""
    from svmsim.cli import main
    status = main(["fuzz", name, "--time", "5", "--seed", "1", "--out", str(tmp_path)])
    rep = json.loads((tmp_path / "report.json").read_text())
    assert status == 0 and rep["failures"] == 0, rep["findings"]
    assert rep["inputs"] >= 1


@pytest.mark.parametrize("args", [["fuzz"], ["fuzz", "nope"], ["fuzz", "loader", "--time", "nan"],
                                  ["fuzz", "loader", "--kernel", "/nonexistent"],
                                  ["fuzz", "loader", "--workers", "-3"],
                                  ["fuzz", "--replay", "/nonexistent.json"]])
def test_fuzz_usage_mistakes_are_one_line(capsys, args):
    from svmsim.cli import main
    try:
        status = main(args)
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err.splitlines()
    assert status == 2 and len(err) == 1, err


@pytest.mark.slow
def test_ray_workers_on_a_local_instance(tmp_path):
    """--ray: the same campaign as Ray tasks (skipped without svmsim[ray])."""
    ray = pytest.importorskip("ray")
    try:
        rep = driver.run_campaign("loader", 3, workers=2, seed=3, out_dir=str(tmp_path),
                                  ray_address="local", max_inputs=6)
    finally:
        ray.shutdown()
    assert rep["workers"] == 2 and rep["inputs"] >= 2 and rep["failures"] == 0


def test_seeds_are_reproducible():
    for name in NAMES:
        camp = CAMPAIGNS[name]()
        a = driver.encode(camp.generate(random.Random(11)))
        b = driver.encode(camp.generate(random.Random(11)))
        assert a == b, name


def test_vmcb_campaign_against_a_users_hypervisor_kernel(tmp_path):
    """--kernel FILE: the random VMCBs reach the user's kernel as Multiboot
    modules (here the smallest such hypervisor, kernels.vmrun_module_kernel)."""
    from svmsim.fuzz import kernels as K
    path = tmp_path / "hv.bin"
    path.write_bytes(K.vmrun_module_kernel())
    res = driver.work("vmcb", {"kernel": str(path)}, seconds=60, worker=0, workers=1, seed=5,
                      out_dir=str(tmp_path), max_inputs=4)
    assert res["inputs"] == 4 and not res["failures"], res["failures"]
    # the guest's exits come back as the kernel's exit statuses: (EXITCODE << 1) | 1
    assert all(k.startswith("status ") for k in res["outcomes"]), res["outcomes"]
    assert any(int(k.split()[1]) & 1 for k in res["outcomes"]), res["outcomes"]


CORPUS = sorted((__import__("pathlib").Path(__file__).parent / "fuzz_corpus").glob("*.json"))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_saved_reproducers_pass(path):
    """Reproducers of fixed findings (tests/fuzz_corpus/, saved by svmsim fuzz
    and copied here) are replayed: each must keep the invariants."""
    v = driver.replay(str(path))
    assert not v.failure, f"{path.name}: {v.failure}\n{v.detail}"


def test_data_random_draws_from_the_fuzzers_bytes():
    """--atheris: the campaign's choices are read from the fuzzer's input bytes."""
    from svmsim.fuzz.coverage import DataRandom
    camp = CAMPAIGNS["sev-api"]()
    data = bytes(range(256)) * 4
    a = driver.encode(camp.generate(DataRandom(data)))
    assert a == driver.encode(camp.generate(DataRandom(data)))
    assert a != driver.encode(camp.generate(DataRandom(data[::-1])))
    assert driver.check(camp, camp.generate(DataRandom(b""))).outcome    # exhausted: zeros


@pytest.mark.slow
def test_atheris_worker(tmp_path):
    """svmsim fuzz --atheris: a coverage-guided worker (skipped without atheris)."""
    pytest.importorskip("atheris")
    rep = driver.run_campaign("sev-api", 5, workers=1, seed=1, out_dir=str(tmp_path), atheris=True)
    assert rep["inputs"] >= 1 and rep["failures"] == 0, rep


def test_atheris_worker_without_result_is_a_failure(tmp_path):
    """A worker that ends without writing its result (libFuzzer stopped it) is reported as a
    failure carrying the end of its output, not a FileNotFoundError."""
    import subprocess
    import sys
    from svmsim.fuzz.coverage import _collect
    log = open(tmp_path / "w0.log", "w+b")
    proc = subprocess.Popen([sys.executable, "-c", "print('libFuzzer: out-of-memory'); raise SystemExit(3)"],
                            stdout=log, stderr=subprocess.STDOUT)
    res = _collect({"name": "sev-api", "worker": 0, "options": {}}, str(tmp_path / "none.json"), log, proc)
    [f] = res["failures"]
    assert f["failure"] == "atheris worker ended with status 3 and no result"
    assert "out-of-memory" in f["detail"]


@pytest.mark.slow
def test_atheris_worker_started_by_a_large_process(tmp_path):
    """ru_maxrss is inherited across fork and exec: a worker started by a process that once
    held 2.5 GiB (a long pytest run) must still fuzz (libFuzzer's own RSS limit is off; the
    driver's bound reads the current RSS)."""
    pytest.importorskip("atheris")
    import subprocess
    import sys
    code = ("b = bytearray(2600 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\ndel b\n"
            "from svmsim.fuzz import driver\n"
            f"rep = driver.run_campaign('sev-api', 3, workers=1, seed=1, out_dir={str(tmp_path)!r}, atheris=True)\n"
            "print(rep['inputs'], rep['failures'], [r['failure'] for r in rep['reproducers']])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    inputs, failures = out.split()[:2]
    assert int(inputs) >= 1 and failures == "0", out
