"""The page-table benchmark kernel (tests/guests/pt_build.c, bench/pt_bench.py;
issue 14, item 2) builds correct tables: its table count and checksum equal
those of the same construction done here in Python (4-level long-mode tables
with 4 KiB pages, APM vol 2, 5.3.3), and the CPU can run on them."""
import io
import re

import guestbuild as gb
from svmsim.machine import Machine

TABLES_BASE, PAGE, M64 = 0x2000000, 4096, (1 << 64) - 1


def expected(mib):
    """(tables, checksum) as pt_build computes them: tables allocated in
    order from TABLES_BASE as install_page() walks down from the PML4."""
    tables, nxt = {}, [TABLES_BASE]

    def alloc():
        a = nxt[0]
        nxt[0] += PAGE
        tables[a] = [0] * 512
        return a
    pml4 = alloc()
    for a in range(0, mib << 20, PAGE):
        t = pml4
        for level in (4, 3, 2):
            idx = (a >> (12 + 9 * (level - 1))) & 511
            if not tables[t][idx] & 1:
                tables[t][idx] = alloc() | 3
            t = tables[t][idx] & ~0xFFF
        tables[t][(a >> 12) & 511] = a | 3
    s = 0
    for t in sorted(tables):
        for e in tables[t]:
            s = ((s ^ e) * 0x100000001B3) & M64
    return len(tables), s


def test_pt_build_tables_match_a_python_construction():
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    m.load_kernel(str(gb.build_guest("pt_build")), "mib=64")
    m.run(max_insns=20_000_000, timeout=300)
    text = out.getvalue().decode()
    assert "pt_build: PASS" in text, text
    got = re.search(r"(\d+) tables, checksum=0x([0-9a-f]+), marker ok", text)
    n, s = expected(64)
    assert got and (int(got.group(1)), int(got.group(2), 16)) == (n, s), text
