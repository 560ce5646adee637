"""The pytest plugin shipped with svmsim (issue 15, item 5), used from a
user's own test file the way a project's CI would use it."""
import importlib.metadata

import pytest

import guestbuild as gb

pytest_plugins = ["pytester"]


def _plugin_args():
    """-p svmsim.pytest_plugin unless the installed package registers it already."""
    eps = importlib.metadata.entry_points(group="pytest11")
    return () if any(ep.value == "svmsim.pytest_plugin" for ep in eps) else ("-p", "svmsim.pytest_plugin")


def test_entry_point_is_declared():
    import tomllib
    from pathlib import Path
    meta = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"]["svmsim"] == "svmsim.pytest_plugin"


def test_a_users_tests_with_the_fixtures(pytester):
    hello, hv, edu = gb.build_guest("hello"), gb.build_guest("svm_intercepts"), gb.build_guest("edu")
    pytester.makepyfile(f'''
        def test_hello(run_kernel):
            r = run_kernel({str(hello)!r}, append="greeting=1 svmsim", timeout=60)
            assert r.passed and r.status == 1, r.reason
            assert "cmdline args: 'greeting=1 svmsim'" in r.output
            assert r.exits == {{}}

        def test_hypervisor_exits(run_kernel):
            r = run_kernel({str(hv)!r}, timeout=120)
            assert r.passed and r.exits["HLT"] == 1 and r.svm["vmruns"] == sum(r.exits.values())

        def test_machine_fixture(svmsim_machine):
            svmsim_machine.load_kernel({str(hello)!r}, "x")
            r = svmsim_machine.run(timeout=60)
            assert r.status == 1 and "hello from svmsim" in svmsim_machine.serial_output()

        def test_same_as_qemu(run_kernel, qemu_transcript):
            r = run_kernel({str(hello)!r}, append="a b")
            q = qemu_transcript({str(hello)!r}, append="a b")
            assert (q.output, q.status) == (r.output, r.status)

        def test_a_device_driver_as_on_qemu(run_kernel, qemu_transcript):
            r = run_kernel({str(edu)!r}, devices=("edu",))
            assert r.passed and "edu: PASS" in r.output, r.reason
            q = qemu_transcript({str(edu)!r}, devices=("edu",))
            assert (q.output, q.status) == (r.output, r.status)
    ''')
    result = pytester.runpytest(*_plugin_args(), "-q")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == 5 and not outcomes.get("failed")
    if gb.qemu_available():
        assert outcomes["passed"] == 5
