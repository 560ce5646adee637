"""The fuzzing driver (issue 13): a registry of campaigns, the invariants
every input is checked against, workers, reproducers and one merged report.

A campaign generates one input from a seeded ``random.Random`` (a JSON value:
dicts, lists, numbers, strings and bytes) and executes it, returning a short
outcome label ("status 2", "INVALID_ADDRESS", ...).  The driver checks, for
every input:

* no Python exception escapes: the input ends in an architectural outcome or
  a one-line user error.  A ``Failure`` raised by the campaign (a broken
  property: status 70, a traceback printed, plaintext visible to the host)
  or any other exception is a failure;
* no hang: a wall-clock bound per input (SIGALRM, ``--case-timeout``; the
  campaigns also give each run a wall-clock timeout and a virtual-time or
  instruction budget);
* bounded memory: the worker's RSS after each input stays under ``--rss-mib``.

A failure is saved as a reproducer (campaign, seed, input, what failed),
shrunk first (``shrink``), and ``svmsim fuzz CAMPAIGN --replay FILE`` runs it
again.  Workers are processes (multiprocessing, one per worker) or Ray tasks
(``--ray ADDRESS``); their results merge into one report.
"""
from __future__ import annotations

import base64
import gc
import json
import os
import random
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

CAMPAIGNS: dict = {}


def campaign(cls):
    """Class decorator: register a campaign under ``cls.name``."""
    CAMPAIGNS[cls.name] = cls
    return cls


def load_all() -> dict:
    """Import every campaign module (they register themselves)."""
    from . import c_loader, c_cli, c_insns, c_vmcb, c_sev    # noqa: F401
    return CAMPAIGNS


class Failure(Exception):
    """An invariant or property the campaign checks was broken."""


class Hang(BaseException):
    """An input ran past the driver's wall-clock bound.  A BaseException, so
    svmsim's own ``except Exception`` (the run loop's bug catcher) does not
    swallow it."""


class Campaign:
    """Base of campaigns.  ``options`` come from ``svmsim fuzz ... --option
    KEY=VALUE`` (e.g. the VMCB campaign's ``kernel=FILE``)."""
    name = ""
    description = ""
    case_timeout = 60.0

    def __init__(self, options: dict = None):
        self.options = dict(options or {})

    def generate(self, rnd: random.Random):
        raise NotImplementedError

    def execute(self, inp) -> str:
        raise NotImplementedError


# -- inputs as JSON (bytes as {"hex": ...}) ---------------------------------------------------
def encode(value):
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value):
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


# -- one input, checked ---------------------------------------------------------------------
def rss_mib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


@dataclass
class Verdict:
    outcome: str = ""                 # the campaign's label, when the input passed
    failure: str = ""                 # one line: what was broken
    detail: str = ""                  # a traceback, when there is one
    seconds: float = 0.0


def _on_alarm(signum, frame):
    raise Hang()


def check(camp: Campaign, inp, timeout: float = None) -> Verdict:
    """Execute one input under the driver's invariants."""
    timeout = timeout or camp.case_timeout
    use_alarm = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    t = time.monotonic()
    v = Verdict()
    try:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        v.outcome = str(camp.execute(inp))
    except Hang:
        v.failure = f"hang: still running after {timeout:g} s"
    except Failure as e:
        v.failure = str(e).splitlines()[0] if str(e) else "failure"
        v.detail = str(e)
    except BaseException as e:                       # noqa: BLE001 (any escape is the finding)
        if isinstance(e, KeyboardInterrupt):
            raise
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" at {where.filename.split('svmsim/')[-1]}:{where.lineno}" if where else ""
        v.failure = f"exception {type(e).__name__}{at}: {str(e)[:200]}"
        v.detail = "".join(traceback.format_exception(e))
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    v.seconds = time.monotonic() - t
    return v


def signature(failure: str) -> str:
    """Failures with the same signature are one finding (numbers dropped)."""
    import re
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "N", failure)[:160]


# -- shrinking -----------------------------------------------------------------------------------
def _size(x) -> tuple:
    """How big an input is: its JSON length, then its non-zero bytes and numbers."""
    def nonzero(v):
        if isinstance(v, (bytes, bytearray)):
            return sum(1 for b in v if b)
        if isinstance(v, dict):
            return sum(nonzero(i) for i in v.values())
        if isinstance(v, list):
            return sum(nonzero(i) for i in v)
        return int(isinstance(v, int) and not isinstance(v, bool) and v not in (0, 1))
    return len(json.dumps(encode(x))), nonzero(x)


def shrink(camp: Campaign, inp, failure: str, budget_s: float = 60.0):
    """Delta-debug ``inp`` towards a smaller input with the same failure
    signature: drop list items, cut and zero byte strings, zero numbers."""
    want = signature(failure)
    deadline = time.monotonic() + budget_s

    def still_fails(candidate) -> bool:
        if time.monotonic() > deadline:
            return False
        v = check(camp, candidate)
        return bool(v.failure) and signature(v.failure) == want

    def candidates(x):
        if isinstance(x, list):
            n = len(x)
            chunk = n // 2
            while chunk >= 1:
                for i in range(0, n, chunk):
                    yield x[:i] + x[i + chunk:]
                chunk //= 2
            for i, item in enumerate(x):
                for c in candidates(item):
                    yield x[:i] + [c] + x[i + 1:]
        elif isinstance(x, dict):
            for k, item in x.items():
                for c in candidates(item):
                    yield {**x, k: c}
        elif isinstance(x, (bytes, bytearray)):
            n = len(x)
            chunk = n // 2
            while chunk >= 1:
                for i in range(0, n, chunk):
                    yield x[:i] + x[i + chunk:]
                    if any(x[i:i + chunk]):
                        yield x[:i] + bytes(len(x[i:i + chunk])) + x[i + chunk:]
                chunk //= 4 if chunk > 64 else 2
        elif isinstance(x, bool):
            return
        elif isinstance(x, int) and x not in (0, 1):
            yield 0
            yield 1

    best = inp
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for c in candidates(best):
            if time.monotonic() > deadline:
                break
            if _size(c) >= _size(best):
                continue
            if still_fails(c):
                best, improved = c, True
                break
    return best


# -- a worker ------------------------------------------------------------------------------------
@dataclass
class WorkerResult:
    campaign: str
    worker: int
    inputs: int = 0
    seconds: float = 0.0
    outcomes: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)       # reproducer dicts
    rss_start_mib: int = 0
    rss_peak_mib: int = 0
    rss_end_mib: int = 0
    slowest: list = field(default_factory=list)        # [seconds, seed, outcome or failure], top 5


def work(name: str, options: dict, seconds: float, worker: int, workers: int, seed: int,
         out_dir: str | None, rss_limit_mib: int = 1536, max_inputs: int = None,
         shrink_s: float = 60.0) -> dict:
    """One worker: inputs seed + worker, seed + worker + workers, ... until
    ``seconds`` have passed (or ``max_inputs``).  Returns a WorkerResult as a dict."""
    load_all()
    camp = CAMPAIGNS[name](options)
    res = WorkerResult(name, worker, rss_start_mib=rss_mib())
    res.rss_peak_mib = res.rss_start_mib
    start = time.monotonic()
    seen = set()
    k = 0
    while time.monotonic() - start < seconds and (max_inputs is None or res.inputs < max_inputs):
        s = seed + worker + k * workers
        k += 1
        inp = camp.generate(random.Random(s))
        v = check(camp, inp)
        res.inputs += 1
        if len(res.slowest) < 5 or v.seconds > res.slowest[-1][0]:
            res.slowest = sorted(res.slowest + [[round(v.seconds, 2), s, v.outcome or v.failure]],
                                 reverse=True)[:5]
        rss = rss_mib()
        if rss > rss_limit_mib:
            gc.collect()
            rss = rss_mib()
            if rss > rss_limit_mib and not v.failure:
                v.failure = f"rss: {rss} MiB after this input (bound {rss_limit_mib} MiB)"
        res.rss_peak_mib = max(res.rss_peak_mib, rss)
        if v.failure:
            sig = signature(v.failure)
            small = inp
            if sig not in seen and not v.failure.startswith("rss"):
                small = shrink(camp, inp, v.failure, shrink_s)
            repro = {"campaign": name, "seed": s, "options": options, "failure": v.failure,
                     "detail": v.detail[-4000:], "input": encode(small),
                     "shrunk": small is not inp, "new": sig not in seen}
            seen.add(sig)
            res.failures.append(repro)
            if out_dir:
                os.makedirs(out_dir, exist_ok=True)
                with open(os.path.join(out_dir, f"{name}-{s}.json"), "w") as f:
                    json.dump(repro, f, indent=1)
            if rss > rss_limit_mib:
                break                       # this worker's memory is no longer trustworthy
        else:
            res.outcomes[v.outcome] = res.outcomes.get(v.outcome, 0) + 1
    res.seconds = time.monotonic() - start
    res.rss_end_mib = rss_mib()
    return res.__dict__


def _work_star(kw):
    return work(**kw)


def run_campaign(name: str, seconds: float, workers: int = 1, seed: int = None, out_dir: str = None,
                 options: dict = None, ray_address: str = None, rss_limit_mib: int = 1536,
                 max_inputs: int = None, atheris: bool = False) -> dict:
    """Run a campaign on ``workers`` processes (or Ray tasks) and merge the results."""
    load_all()
    if name not in CAMPAIGNS:
        raise KeyError(name)
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little") << 16
    jobs = [dict(name=name, options=options or {}, seconds=seconds, worker=w, workers=workers,
                 seed=seed, out_dir=out_dir, rss_limit_mib=rss_limit_mib,
                 max_inputs=None if max_inputs is None else -(-max_inputs // workers))
            for w in range(workers)]
    t = time.monotonic()
    if atheris:
        from .coverage import run_workers
        results = run_workers(jobs)
    elif ray_address:
        results = _run_ray(ray_address, jobs)
    elif workers == 1:
        results = [work(**jobs[0])]
    else:
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            results = pool.map(_work_star, jobs)
    return merge(name, seed, results, time.monotonic() - t)


def _run_ray(address: str, jobs: list) -> list:
    try:
        import ray
    except ImportError:
        from ..errors import ConfigError
        raise ConfigError("--ray needs Ray: pip install 'svmsim[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False)
    remote = ray.remote(max_retries=0)(_work_star)
    return ray.get([remote.remote(j) for j in jobs])


def merge(name: str, seed: int, results: list, wall: float) -> dict:
    outcomes: dict = {}
    failures = []
    for r in results:
        for k, n in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + n
        failures.extend(r["failures"])
    findings: dict = {}
    for f in failures:
        findings.setdefault(signature(f["failure"]), []).append(f["seed"])
    return {"campaign": name, "seed": seed, "workers": len(results), "wall_seconds": round(wall, 1),
            "inputs": sum(r["inputs"] for r in results), "failures": len(failures),
            "findings": [{"failure": next(f["failure"] for f in failures if signature(f["failure"]) == s),
                          "seeds": seeds[:20], "count": len(seeds)} for s, seeds in findings.items()],
            "rss_peak_mib": max(r["rss_peak_mib"] for r in results),
            "rss_start_end_mib": [(r["rss_start_mib"], r["rss_end_mib"]) for r in results],
            "slowest": sorted((x for r in results for x in r.get("slowest", [])), reverse=True)[:5],
            "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
            "reproducers": failures}


def format_report(rep: dict) -> str:
    lines = [f"svmsim fuzz {rep['campaign']}: {rep['inputs']} inputs in {rep['wall_seconds']} s on "
             f"{rep['workers']} worker(s), seed {rep['seed']}: {rep['failures']} failure(s); "
             f"peak RSS {rep['rss_peak_mib']} MiB (start -> end: "
             + ", ".join(f"{a} -> {b}" for a, b in rep.get("rss_start_end_mib", [])) + ")"]
    for f in rep["findings"]:
        lines.append(f"  FAIL x{f['count']}: {f['failure']} (seeds {', '.join(map(str, f['seeds'][:5]))})")
    if rep.get("slowest"):
        lines.append("  slowest: " + "; ".join(f"{t} s seed {seed} ({what})" for t, seed, what in rep["slowest"][:3]))
    top = list(rep["outcomes"].items())[:8]
    if top:
        lines.append("  outcomes: " + "; ".join(f"{k}: {n}" for k, n in top)
                     + ("; ..." if len(rep["outcomes"]) > 8 else ""))
    return "\n".join(lines)


def replay(path: str) -> Verdict:
    """Run a saved reproducer again."""
    with open(path) as f:
        repro = json.load(f)
    load_all()
    camp = CAMPAIGNS[repro["campaign"]](repro.get("options") or {})
    return check(camp, decode(repro["input"]))
