"""The floors of svmsim point down: the CPU, memory and devices never import
SVM, SEV or the reference VMM (SVM plugs into the CPU through cpu/hooks.py,
as Bochs' SVM intercept macros do); SVM and SEV never import the VMM or the
command line.  Checked on the import statements of every module, including
imports inside functions."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "svmsim"

# package -> packages it must never import
FORBIDDEN = {
    "cpu": {"svm", "sev", "vmm", "cli", "debug", "trace", "fuzz"},
    "memory": {"svm", "sev", "vmm", "cli", "debug", "trace", "fuzz"},
    "devices": {"svm", "vmm", "cli", "debug", "trace", "fuzz"},
    "svm": {"vmm", "cli", "fuzz"},
    "sev": {"vmm", "cli", "fuzz"},
}


def imported_packages(path: pathlib.Path, root: pathlib.Path = ROOT):
    """(line, top-level svmsim package) for every import in the module."""
    rel = path.relative_to(root).with_suffix("").parts
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "svmsim" and len(parts) > 1:
                    yield node.lineno, parts[1]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[:len(rel) - node.level])
                mod = base + (node.module.split(".") if node.module else [])
                if mod:
                    yield node.lineno, mod[0]
                else:               # "from .. import x": x is a top-level package or module
                    for a in node.names:
                        yield node.lineno, a.name
            elif node.module and node.module.split(".")[0] == "svmsim":
                parts = node.module.split(".")
                for name in ([parts[1]] if len(parts) > 1 else [a.name for a in node.names]):
                    yield node.lineno, name


def test_lower_floors_never_import_higher_ones():
    bad = []
    for floor, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / floor).rglob("*.py")):
            for line, pkg in imported_packages(path):
                if pkg in forbidden:
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports svmsim.{pkg}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_every_spelling_of_an_import(tmp_path):
    """The checker itself: relative, absolute and in-function imports are found."""
    (tmp_path / "cpu").mkdir()
    probe = tmp_path / "cpu" / "probe.py"
    probe.write_text("from ..svm import world\nimport svmsim.vmm.vmm\n"
                     "def f():\n    from svmsim import sev\n    from . import tlb\n")
    assert {pkg for _, pkg in imported_packages(probe, tmp_path)} == {"svm", "vmm", "sev", "cpu"}
