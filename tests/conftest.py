import pathlib
import sys

# Tests import their helpers (guestbuild, cpuharness) as top-level modules.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
