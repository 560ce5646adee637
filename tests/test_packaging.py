"""Packaging (issue 15, item 6): a wheel installed in a fresh environment runs
``svmsim demo`` with no source tree and no compiler, ships the guest runtime
(``svmsim init``), and its prebuilt kernels are reproducible; ``--version``;
declared dependencies are used."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

import guestbuild as gb

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_version():
    p = subprocess.run([sys.executable, "-m", "svmsim", "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("svmsim ")


def test_every_declared_dependency_is_imported():
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    modules = {"iced-x86": "iced_x86", "pyelftools": "elftools", "cryptography": "cryptography",
               "mpmath": "mpmath"}
    source = "\n".join(p.read_text() for p in (ROOT / "svmsim").rglob("*.py"))
    for dep in deps:
        name = dep.split(">")[0].split("=")[0].strip()
        assert name in modules, f"{name}: declared, but what imports it?"
        assert f"import {modules[name]}" in source or f"from {modules[name]}" in source, name


def test_init_gives_a_kernel_that_builds_and_runs(tmp_path):
    p = subprocess.run([sys.executable, "-m", "svmsim", "init", str(tmp_path / "k")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    subprocess.run(["make", "-s", "-C", str(tmp_path / "k")], check=True, capture_output=True)
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", str(tmp_path / "k" / "hello.elf"),
                        "--append", "name=world"], capture_output=True, text=True, timeout=120)
    assert p.returncode == gb.STATUS_PASS
    assert p.stdout == "hello from my kernel: multiboot magic ok, command line 'name=world'\n"


def test_template_makefile_uses_guestbuilds_flags():
    """One recipe: the users' Makefile builds as tests/guestbuild.py does."""
    text = (ROOT / "svmsim" / "guestkit" / "template" / "Makefile").read_text().replace("\\\n", " ")
    flags = {k: v.split() for k, v in (l.split(":=", 1) for l in text.splitlines() if ":=" in l)}
    assert [f for f in flags["CFLAGS "] if f != "-Ilib"] == list(gb.BASE_CFLAGS)
    assert flags["ASFLAGS "] == list(gb.BASE_ASFLAGS)
    assert flags["LDFLAGS "] == list(gb.BASE_LDFLAGS)


@pytest.mark.slow
def test_demo_kernels_rebuild_to_identical_bytes(tmp_path):
    from svmsim.guestkit import DEMO_KERNELS
    for name, kind in DEMO_KERNELS.items():
        a = gb.build_guest(name, kind=kind, cache=tmp_path / "a").read_bytes()
        b = gb.build_guest(name, kind=kind, cache=tmp_path / "b").read_bytes()
        assert a == b, name


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_demo_without_source_or_compiler(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("svmsim-*.whl"))
    venv = tmp_path / "venv"
    # The dependencies come from this interpreter's site-packages (no network in a test);
    # svmsim itself only from the wheel (CI's .ci/run also installs it into a bare venv).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    run = lambda *a: subprocess.run([str(venv / "bin" / "svmsim"), *a], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import svmsim; print(svmsim.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    assert where.startswith(str(venv))
    p = run("demo")
    assert p.returncode == 0, p.stderr
    assert "building" not in p.stderr and "svmsim demo: PASS" in p.stderr and "svm_basic: PASS" in p.stdout
    assert run("--version").stdout.strip() == "svmsim 0.1.0"
    p = run("init", "mykernel")
    assert p.returncode == 0 and (tmp_path / "mykernel" / "lib" / "rt.h").is_file()
    manifest = json.loads((venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" /
                           "site-packages" / "svmsim" / "guestkit" / "kernels" / "manifest.json").read_text())
    from svmsim.guestkit import DEMO_KERNELS
    assert set(manifest["kernels"]) == set(DEMO_KERNELS)
    import hashlib
    for name, entry in manifest["kernels"].items():
        rebuilt = gb.build_guest(name, kind=entry["kind"]).read_bytes()
        assert hashlib.sha256(rebuilt).hexdigest() == entry["sha256"], name


def _run_with_tty_stderr(*args):
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "svmsim", "run", *args], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=120)
    os.close(master)
    return p.returncode, b"".join(chunks).decode()


def test_status_line_on_a_terminal_only():
    k = str(gb.build_guest("loop"))
    status, tty = _run_with_tty_stderr(k, "--append", "iters=3000000")   # runs for seconds: the line is redrawn each 0.5 s
    assert status == gb.STATUS_PASS
    assert "\r\x1b[Ksvmsim: " in tty and " M instructions, " in tty and " M/s" in tty
    assert tty.rstrip("\r\n").endswith("\x1b[K") or "\x1b[K" in tty.splitlines()[-1]
    status, tty = _run_with_tty_stderr(k, "--append", "iters=100000", "-q")
    assert "\x1b[K" not in tty
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", k, "--append", "iters=100000"],
                       capture_output=True, text=True, timeout=120)
    assert "\x1b[K" not in p.stderr
