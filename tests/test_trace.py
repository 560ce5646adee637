"""Traces (issue 15, item 4): symbols and disassembly in --trace, decoded
fields and a closing summary record in JSON lines, separate filters for
stderr and the file, the Perfetto (Chrome trace-event) format, and the exit
coverage of a hypervisor under test."""
import json
import re
import subprocess
import sys

import pytest

import guestbuild as gb


@pytest.fixture(scope="module")
def svm_basic():
    return str(gb.build_guest("svm_basic"))


def cli(*args):
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def traced(svm_basic, tmp_path_factory):
    """One run: stderr gets vmexit and exception events, the file everything."""
    f = tmp_path_factory.mktemp("trace") / "t.jsonl"
    status, out, err = cli(svm_basic, "--trace", "vmexit,exceptions", "--trace-file", str(f), "--exit-coverage")
    return status, err, [json.loads(line) for line in f.read_text().splitlines()]


def test_text_trace_has_symbols_and_disassembly(traced):
    status, err, _ = traced
    assert status == gb.STATUS_PASS
    assert re.search(r"\[cpu0\] #VMEXIT CPUID \(0x72\) info1=0x0 info2=0x0 rip=0x[0-9a-f]+ <gx_cpuid> \(cpuid\) "
                     r"asid=1 insns=\d+", err)
    assert re.search(r"\[cpu0 guest\] fault at rip=0x[0-9a-f]+ <gx_ud2_fn> \(ud2\): #UD", err)
    assert "[cpu0 guest] inject #GP (exception), error code 0x18" in err
    assert " deliver " not in err                       # interrupts were not asked for on stderr


def test_jsonl_events_are_decoded_and_end_with_a_summary(traced):
    status, _, events = traced
    kinds = {e["type"] for e in events}
    assert {"vmrun", "vmexit", "inject", "exception", "deliver", "summary"} <= kinds   # the file: all
    for e in events[:-1]:
        assert isinstance(e["cpu"], int) and isinstance(e["insns"], int) and isinstance(e["ns"], int)
        assert e["world"] in ("host", "guest")
    exits = [e for e in events if e["type"] == "vmexit"]
    assert all("name" in e for e in exits)
    ud = next(e for e in exits if e["name"] == "EXCP_UD")
    assert ud["insn"] == "ud2" and ud["symbol"] == "<gx_ud2_fn>"
    inj = [e for e in events if e["type"] == "inject"]
    assert {e["event_decoded"] for e in inj} >= {"#GP (exception), error code 0x18", "#UD (exception)"}
    deliver = [e for e in events if e["type"] == "deliver"]
    assert {e["kind_name"] for e in deliver} >= {"exception", "interrupt"}
    summary = events[-1]
    assert summary["type"] == "summary" and summary["status"] == gb.STATUS_PASS
    assert summary["svm"]["exits"]["CPUID"] == 3
    assert summary["events"]["vmexit"] == len(exits) == sum(summary["svm"]["exits"].values())


def test_exit_coverage(traced):
    status, err, events = traced
    cov = events[-1]["exit_coverage"]
    assert set(cov["enabled"]) >= {"CPUID", "IOIO", "MSR", "HLT", "VMMCALL", "EXCP_UD", "SHUTDOWN"}
    assert "SHUTDOWN" in cov["never_fired"] and cov["fired"]["CPUID"] == 3
    assert re.search(r"svmsim:   SHUTDOWN\s+never fired", err)
    assert re.search(r"svmsim: \d+ intercepts enabled, \d+ fired, \d+ never did: .*SHUTDOWN", err)


def test_perfetto_trace(svm_basic, tmp_path):
    f = tmp_path / "t.json"
    status, _, _ = cli(svm_basic, "--trace-file", str(f), "--trace-format", "perfetto", "-q")
    assert status == gb.STATUS_PASS
    doc = json.loads(f.read_text())
    ev = doc["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert set(names.values()) == {"host", "guest ASID 1"}
    slices = sorted((e for e in ev if e["ph"] == "X"), key=lambda e: e["ts"])
    # Host and guest alternate without overlapping on the one CPU.
    for a, b in zip(slices, slices[1:]):
        assert a["ts"] + a["dur"] <= b["ts"] + 1e-6
        assert a["name"] != b["name"]
    exits = [e for e in ev if e["ph"] == "i" and e["name"].startswith("#VMEXIT")]
    assert len(exits) == 577 and {e["name"] for e in exits} >= {"#VMEXIT CPUID", "#VMEXIT IOIO"}
    assert doc["metadata"]["reason"] == "isa-debug-exit: guest wrote 0x0"


def test_separate_filters(svm_basic, tmp_path):
    f = tmp_path / "t.jsonl"
    status, _, err = cli(svm_basic, "--trace", "exceptions", "--trace-file", str(f),
                         "--trace-file-filter", "vmexit", "-q")
    types = {json.loads(line)["type"] for line in f.read_text().splitlines()}
    assert types == {"vmrun", "vmexit", "inject", "summary"}
    assert "fault at" in err and "#VMEXIT" not in err


def test_unknown_category_is_one_line(svm_basic):
    status, _, err = cli(svm_basic, "--trace", "bogus")
    assert status == 2 and err.count("\n") == 1 and "unknown trace category 'bogus'" in err
