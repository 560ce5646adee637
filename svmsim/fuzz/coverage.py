"""Coverage-guided campaigns with atheris (``svmsim fuzz CAMPAIGN --atheris``).

A campaign's ``generate(rnd)`` draws every choice from ``rnd``; here ``rnd``
is a ``DataRandom`` whose draws are read from atheris's input bytes, so
libFuzzer's mutations steer the choices towards inputs that reach new
svmsim code (atheris instruments every loaded Python function).  Each input
is checked by the driver's ``check`` as in the random campaigns; a failure
is saved as a reproducer (with the fuzzer's bytes) and the fuzzer goes on.

libFuzzer ends its process with exit(), so each worker is a subprocess
(``python3 -m svmsim.fuzz.coverage``) that writes its WorkerResult as JSON
before its time is up and leaves; the driver merges them as usual.
"""
import json
import os
import random
import sys
import tempfile
import time


class DataRandom(random.Random):
    """random.Random whose draws come from ``data`` (then zeros)."""

    def __init__(self, data: bytes):
        self._data, self._pos = data, 0
        super().__init__(0)

    def getrandbits(self, k: int) -> int:
        n = (k + 7) // 8
        chunk = self._data[self._pos:self._pos + n]
        self._pos += n
        return int.from_bytes(chunk.ljust(n, b"\0"), "little") & ((1 << k) - 1)

    def random(self) -> float:
        return self.getrandbits(53) / (1 << 53)


def worker(name: str, options: dict, seconds: float, worker_index: int, out_dir: str | None,
           result_path: str, rss_limit_mib: int = 1536) -> None:
    import atheris
    from . import driver
    driver.load_all()
    camp = driver.CAMPAIGNS[name](options)
    res = driver.WorkerResult(name, worker_index, rss_start_mib=driver.rss_mib())
    res.rss_peak_mib = res.rss_start_mib
    start = None                  # the clock starts at the first input (instrumenting takes a while)

    def finish():
        res.seconds = time.monotonic() - start if start is not None else 0.0
        res.rss_end_mib = driver.rss_mib()
        with open(result_path, "w") as f:
            json.dump(res.__dict__, f)
        sys.stdout.flush()
        os._exit(0)

    def one_input(data: bytes):
        nonlocal start
        if start is None:
            start = time.monotonic()
        if time.monotonic() - start >= seconds:
            finish()
        inp = camp.generate(DataRandom(data))
        v = driver.check(camp, inp)
        res.inputs += 1
        rss = driver.rss_mib()
        res.rss_peak_mib = max(res.rss_peak_mib, rss)
        if rss > rss_limit_mib and not v.failure:
            v.failure = f"rss: {rss} MiB after this input (bound {rss_limit_mib} MiB)"
        if v.failure:
            repro = {"campaign": name, "seed": None, "fuzzer_bytes": data.hex(), "options": options,
                     "failure": v.failure, "detail": v.detail[-4000:], "input": driver.encode(inp),
                     "shrunk": False, "new": True}
            res.failures.append(repro)
            if out_dir:
                os.makedirs(out_dir, exist_ok=True)
                with open(os.path.join(out_dir, f"{name}-atheris-{worker_index}-{res.inputs}.json"), "w") as f:
                    json.dump(repro, f, indent=1)
            if rss > rss_limit_mib:
                finish()
        else:
            res.outcomes[v.outcome] = res.outcomes.get(v.outcome, 0) + 1

    atheris.instrument_all()
    # -timeout=0: the driver's own SIGALRM bound applies; libFuzzer's would share the signal.
    # -rss_limit_mb=0: the bound above reads the current RSS; libFuzzer reads ru_maxrss, which
    # a child inherits across fork and exec, so a worker started by a large process (a long
    # pytest run) would be stopped as out-of-memory before its first input.
    # -artifact_prefix: libFuzzer's own crash files go with the reproducers, not into the cwd.
    artifacts = os.path.join(out_dir or tempfile.gettempdir(), f"libfuzzer-{worker_index}-")
    atheris.Setup([sys.argv[0], "-timeout=0", "-rss_limit_mb=0", f"-artifact_prefix={artifacts}",
                   f"-seed={worker_index + 1}", "-max_len=4096"], one_input)
    atheris.Fuzz()
    finish()


def run_workers(jobs: list) -> list:
    """Each job (driver.work's keywords) as an atheris subprocess; their results."""
    import subprocess
    import tempfile
    try:
        import atheris  # noqa: F401
    except ImportError:
        from ..errors import ConfigError
        raise ConfigError("--atheris needs atheris: pip install atheris") from None
    procs = []
    with tempfile.TemporaryDirectory(prefix="svmsim-atheris-") as d:
        for j in jobs:
            path = os.path.join(d, f"w{j['worker']}.json")
            spec = json.dumps({k: j[k] for k in ("name", "options", "seconds", "worker", "out_dir",
                                                 "rss_limit_mib")} | {"result_path": path})
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            log = open(os.path.join(d, f"w{j['worker']}.log"), "w+b")
            procs.append((j, path, log, subprocess.Popen([sys.executable, "-m", "svmsim.fuzz.coverage", spec],
                                                         stdout=log, stderr=subprocess.STDOUT,
                                                         stdin=subprocess.DEVNULL, env=env)))
        return [_collect(*p) for p in procs]


def _collect(job: dict, path: str, log, proc) -> dict:
    """A worker's result; a worker that ended without one (libFuzzer stopped it, or it
    crashed) is reported as a failure carrying the end of its output."""
    status = proc.wait()
    log.seek(0)
    tail = log.read()[-4000:].decode(errors="replace")
    log.close()
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    from .driver import WorkerResult
    res = WorkerResult(job["name"], job["worker"])
    res.failures.append({"campaign": job["name"], "seed": None, "options": job["options"],
                         "failure": f"atheris worker ended with status {status} and no result",
                         "detail": tail, "input": None, "shrunk": False, "new": True})
    return res.__dict__


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    sys.argv = sys.argv[:1]
    worker(spec["name"], spec["options"], spec["seconds"], spec["worker"], spec["out_dir"],
           spec["result_path"], spec["rss_limit_mib"])
