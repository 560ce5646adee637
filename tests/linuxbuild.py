"""Build the Linux test workload (issue 16): a bzImage and an initramfs.

The kernel comes from Debian's ``linux-source-X.Y`` package (the tarball in
/usr/src), configured as ``make tinyconfig`` plus ``CONFIG_FRAGMENT`` below
(64-bit, 8250 serial console, printk, initramfs, /proc, PCI, ioperm, and the
SEV guest support of AMD_MEM_ENCRYPT), compressed with LZ4 so decompression
costs little simulated time.  The initramfs holds /init, our own C
(tests/guests/linux/), built with gcc -static -nostdlib, plus /dev/console and
/proc; the cpio (newc) is written here in Python.

Nothing is committed: everything is built on demand and cached in
``$SVMSIM_LINUX_CACHE`` (default ``~/.cache/svmsim-linux``): the extracted
source per package version, and each kernel under a key made of the package
version, the fragment and this recipe.  Building a kernel takes about ten
minutes on two cores, so tests only build when ``SVMSIM_BUILD_LINUX=1``;
otherwise they use the cache or skip.

Command line: ``python3 tests/linuxbuild.py`` builds (or finds) both and
prints their paths.
"""
from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
INIT_DIR = HERE / "guests" / "linux"
RECIPE_VERSION = "1"

#: What the test kernel needs on top of tinyconfig (name -> y/n).
CONFIG_FRAGMENT = {
    "64BIT": "y",
    "KERNEL_XZ": "n", "KERNEL_LZ4": "y",       # LZ4: the cheapest decompressor
    "PRINTK": "y", "EARLY_PRINTK": "y",
    "TTY": "y", "SERIAL_8250": "y", "SERIAL_8250_CONSOLE": "y",
    "BLK_DEV_INITRD": "y", "RD_GZIP": "n", "RD_BZIP2": "n", "RD_LZMA": "n",
    "RD_XZ": "n", "RD_LZO": "n", "RD_LZ4": "n", "RD_ZSTD": "n",
    "BINFMT_ELF": "y", "PROC_FS": "y", "X86_IOPL_IOPERM": "y",
    "PCI": "y",
    "VT": "n", "INPUT": "n", "SERIO": "n",    # headless: no VGA text console, no i8042
    "CPU_SUP_AMD": "y", "AMD_MEM_ENCRYPT": "y",   # SEV guest support
    "RANDOMIZE_BASE": "n",                    # same addresses on every boot
    "ACPI": "n",                                      # see docs/DESIGN.md, "Linux"
}

#: The command line the tests boot with, on QEMU and svmsim alike
#: (initramfs_async=0: the initramfs is unpacked in its initcall, not by a
#: worker whose place in the console depends on the host's speed).
APPEND = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 initramfs_async=0"


class BuildUnavailable(Exception):
    """Why the workload cannot be built or found (tests skip with this text)."""


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SVMSIM_LINUX_CACHE",
                                       pathlib.Path.home() / ".cache" / "svmsim-linux"))


def source_tarball() -> tuple[pathlib.Path, str]:
    """(tarball, Debian package version) of the newest linux-source installed."""
    tars = sorted(glob.glob("/usr/src/linux-source-*.tar.xz"))
    if not tars:
        raise BuildUnavailable("no /usr/src/linux-source-*.tar.xz: apt-get install linux-source")
    tar = pathlib.Path(tars[-1])
    pkg = tar.name[:-len(".tar.xz")]
    try:
        ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        ver = str(tar.stat().st_mtime_ns)
    return tar, f"{pkg}_{ver}"


def kernel_key(version: str) -> str:
    text = repr((RECIPE_VERSION, version, sorted(CONFIG_FRAGMENT.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_kernel() -> pathlib.Path | None:
    """The cached bzImage for the installed source, or None."""
    try:
        _, version = source_tarball()
    except BuildUnavailable:
        found = sorted(cache_dir().glob("kernel-*/bzImage"))
        return found[-1] if found else None
    image = cache_dir() / f"kernel-{kernel_key(version)}" / "bzImage"
    return image if image.exists() else None


def _run(cmd, cwd, log):
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise BuildUnavailable(f"{' '.join(map(str, cmd[:3]))} failed (see {log})")


def _source_tree(tar: pathlib.Path, version: str) -> pathlib.Path:
    src = cache_dir() / "src" / version
    if (src / "Makefile").exists():
        return src
    tmp = pathlib.Path(tempfile.mkdtemp(dir=cache_dir()))
    with tarfile.open(tar) as t:
        t.extractall(tmp, filter="tar")
    (inner,) = tmp.iterdir()
    src.parent.mkdir(parents=True, exist_ok=True)
    os.replace(inner, src)
    shutil.rmtree(tmp)
    return src


def build_kernel(jobs: int = 2) -> pathlib.Path:
    """Configure and build the test bzImage (cached); returns its path."""
    for tool in ("gcc", "make", "flex", "bison", "bc", "lz4"):
        if shutil.which(tool) is None:
            raise BuildUnavailable(f"building Linux needs {tool} (apt-get install flex bison bc lz4 "
                                   "libelf-dev make gcc)")
    tar, version = source_tarball()
    key = kernel_key(version)
    out = cache_dir() / f"kernel-{key}"
    if (out / "bzImage").exists():
        return out / "bzImage"
    cache_dir().mkdir(parents=True, exist_ok=True)
    src = _source_tree(tar, version)
    build = cache_dir() / f"build-{version}"       # reused: make rebuilds what changed
    build.mkdir(exist_ok=True)
    log = build / "build.log"
    make = ["nice", "-n", "10", "make", "-s", f"O={build}", f"-j{jobs}"]
    _run(make + ["tinyconfig"], src, log)
    args = []
    for name, value in CONFIG_FRAGMENT.items():
        args += ["--enable" if value == "y" else "--disable", name]
    _run([src / "scripts" / "config", "--file", build / ".config"] + args, src, log)
    _run(make + ["olddefconfig"], src, log)
    _check_config(build / ".config")
    _run(make + ["bzImage"], src, log)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=cache_dir()))
    shutil.copy(build / "arch" / "x86" / "boot" / "bzImage", tmp / "bzImage")
    shutil.copy(build / ".config", tmp / "config")
    (tmp / "version").write_text(version + "\n")
    os.replace(tmp, out)
    return out / "bzImage"


def _check_config(path: pathlib.Path) -> None:
    """Every fragment option must have survived olddefconfig's dependencies."""
    text = path.read_text()
    for name, value in CONFIG_FRAGMENT.items():
        on = re.search(rf"^CONFIG_{name}=y$", text, re.M) is not None
        if on != (value == "y"):
            raise BuildUnavailable(f"CONFIG_{name} did not end up {value} in {path}")


# ---------------------------------------------------------------- initramfs
INIT_CFLAGS = ("-O2", "-ffreestanding", "-fno-tree-loop-distribute-patterns", "-fno-math-errno",
               "-fno-pie", "-fno-stack-protector", "-fno-asynchronous-unwind-tables")


def _init_sources():
    return sorted(INIT_DIR.glob("*.[chS]"))


def build_init(out_dir: pathlib.Path) -> pathlib.Path:
    """/init: start.S and init.c (general registers only), fpcheck.c (-O2)."""
    objs = []
    for src in ("start.S", "init.c", "fpcheck.c"):
        obj = out_dir / (src.split(".")[0] + ".o")
        extra = ("-mgeneral-regs-only",) if src == "init.c" else ()
        subprocess.run(["gcc", *INIT_CFLAGS, *extra, "-c", str(INIT_DIR / src), "-o", str(obj)],
                       check=True)
        objs.append(str(obj))
    exe = out_dir / "init"
    subprocess.run(["gcc", "-static", "-nostdlib", "-no-pie", "-Wl,-z,noexecstack",
                    "-Wl,--build-id=none", "-o", str(exe), *objs], check=True)
    return exe


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev=(0, 0), ino: int = 1) -> bytes:
    """One entry of the newc cpio format the kernel unpacks (early userspace
    support, Documentation/driver-api/early-userspace/buffer-format.rst)."""
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    pad = lambda n: b"\0" * (-n % 4)                               # noqa: E731
    rec = head + name.encode() + b"\0"
    return rec + pad(len(rec)) + data + pad(len(data))


def cpio(entries) -> bytes:
    out = b"".join(_cpio_entry(*e, ino=i + 1) for i, e in enumerate(entries))
    return out + _cpio_entry("TRAILER!!!", 0, ino=0)


def _init_key() -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode() + repr(INIT_CFLAGS).encode())
    for f in _init_sources():
        h.update(f.name.encode() + f.read_bytes())
    try:
        h.update(subprocess.run(["gcc", "--version"], capture_output=True).stdout)
    except OSError:
        raise BuildUnavailable("building the initramfs needs gcc") from None
    return h.hexdigest()[:16]


def build_init_binary() -> pathlib.Path:
    """/init, built once per source hash and cached."""
    path = cache_dir() / f"init-{_init_key()}"
    if path.exists():
        return path
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        exe = build_init(pathlib.Path(tmp))
        os.replace(exe, path)
    return path


def build_initramfs() -> pathlib.Path:
    """The initramfs: /init, /dev/console, /proc (cached by the init's hash)."""
    path = cache_dir() / f"initramfs-{_init_key()}.cpio"
    if path.exists():
        return path
    init = build_init_binary().read_bytes()
    blob = cpio([("dev", 0o040755), ("dev/console", 0o020600, b"", (5, 1)),
                 ("proc", 0o040755), ("init", 0o100755, init)])
    part = path.with_suffix(".part")
    part.write_bytes(blob)
    os.replace(part, path)
    return path


def workload(build: bool | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """(bzImage, initramfs).  Builds the kernel only if ``build`` (default:
    the environment variable SVMSIM_BUILD_LINUX=1); raises BuildUnavailable
    with the reason otherwise."""
    if build is None:
        build = os.environ.get("SVMSIM_BUILD_LINUX") == "1"
    kernel = build_kernel() if build else cached_kernel()
    if kernel is None:
        raise BuildUnavailable("no cached test kernel; set SVMSIM_BUILD_LINUX=1 to build it "
                               "from Debian's linux-source (about 10 minutes)")
    return kernel, build_initramfs()


if __name__ == "__main__":
    try:
        k, i = workload(build=True)
    except BuildUnavailable as e:
        sys.exit(f"linuxbuild: {e}")
    print(k)
    print(i)
