"""Wheel builds ship svmsim's demo kernels prebuilt and its guest runtime
(svmsim/guestkit): ``build_py`` compiles tests/guests with the builder's gcc
(so building a wheel needs gcc and binutils; installing it needs neither).
Editable installs build nothing: the demo then compiles from the tree."""
import hashlib
import json
import pathlib
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent


class build_py_with_guests(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        kit = pathlib.Path(self.build_lib) / "svmsim" / "guestkit"
        build_guestkit(kit)


def build_guestkit(kit: pathlib.Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    import guestbuild
    from svmsim.guestkit import DEMO_KERNELS
    lib = kit / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    for f in sorted((ROOT / "tests" / "guests" / "lib").iterdir()):
        if f.suffix in (".c", ".h", ".S", ".ld"):
            shutil.copy(f, lib / f.name)
    kernels = kit / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, kind in DEMO_KERNELS.items():
        built = guestbuild.build_guest(name, kind=kind)
        data = built.read_bytes()
        (kernels / f"{name}.elf").write_bytes(data)
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "kind": kind}
    manifest = {"kernels": entries, "toolchain": guestbuild._tool_versions().splitlines()}
    (kernels / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


setup(cmdclass={"build_py": build_py_with_guests})
