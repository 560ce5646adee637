"""svmsim's bare-metal guest kit: the demo kernels, prebuilt, and the
freestanding runtime they are built from (boot into long mode, serial
kprintf, IDT, APIC, SVM helpers), to start a kernel of your own with
``svmsim init DIR``.

In a wheel both are package data made when the wheel is built (setup.py
``build_py``: the kernels compiled from tests/guests with the builder's gcc,
reproducibly: no debug info, no build id, fixed link order; ``kernels/
manifest.json`` records their SHA-256 and the toolchain).  In a source
checkout nothing is prebuilt: the demo builds them from tests/guests with
tests/guestbuild.py, as the test suite does.
"""
import json
import logging
import pathlib
import shutil
import sys

log = logging.getLogger(__name__)

HERE = pathlib.Path(__file__).resolve().parent
SOURCE_GUESTS = HERE.parent.parent / "tests" / "guests"

# The kernels a wheel ships: name -> build kind (tests/guestbuild.build_guest).
DEMO_KERNELS = {"svm_basic": "c", "svm_npt": "c", "smoke": "c", "sev_guest": "asm", "hello": "c",
                "attack_target": "asm", "svm_avic": "c", "edu": "c", "dev": "c", "skinit": "c", "smm": "c",
                "snp_attest": "c"}


def packaged_kernel(name: str):
    """The prebuilt kernel's path, or None (not a wheel, or not shipped)."""
    path = HERE / "kernels" / f"{name}.elf"
    return path if path.is_file() else None


def kernel(name: str) -> pathlib.Path:
    """A bundled kernel: the prebuilt one of a wheel, else built from the source
    tree's tests/guests with the machine's gcc (a checkout); FileNotFoundError
    if neither is there."""
    path = packaged_kernel(name)
    if path is not None:
        return path
    tests = SOURCE_GUESTS.parent
    if not (tests / "guestbuild.py").is_file():
        raise FileNotFoundError(f"the kernel {name} is not installed and there is no source tree to build it")
    log.info("building tests/guests/%s with gcc", name)
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    import guestbuild
    return guestbuild.build_guest(name, kind=DEMO_KERNELS.get(name, "c"))


def manifest() -> dict:
    path = HERE / "kernels" / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def runtime_dir():
    """The runtime's sources: packaged, else the source tree's tests/guests/lib."""
    for d in (HERE / "lib", SOURCE_GUESTS / "lib"):
        if (d / "rt.h").is_file():
            return d
    return None


def init(target) -> list:
    """Copy the runtime, an example kernel and its Makefile into ``target``;
    returns the files written."""
    target = pathlib.Path(target)
    lib = runtime_dir()
    if lib is None:
        raise FileNotFoundError("the guest runtime is not installed (no svmsim/guestkit/lib)")
    (target / "lib").mkdir(parents=True, exist_ok=True)
    written = []
    for f in sorted(lib.iterdir()):
        if f.suffix in (".c", ".h", ".S", ".ld"):
            shutil.copy(f, target / "lib" / f.name)
            written.append(target / "lib" / f.name)
    for name in ("Makefile", "hello.c"):
        dest = target / name
        if not dest.exists():
            shutil.copy(HERE / "template" / name, dest)
            written.append(dest)
    return written
