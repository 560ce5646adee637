"""Campaigns on the AMD-SP (issue 13, finding 5 and item 2):

``sev-api``       random sequences of SEV and SEV-SNP firmware commands through
                  the Python API (``machine.amd_sp.command``): states, handles,
                  ASIDs, buffers in RAM, across its end, past it, on MMIO and on
                  the mailbox itself, lengths from 0 to 2^32 - 1;
``sev-mailbox``   the same sequences issued by guest code through the PSP
                  mailbox registers, as Linux's ccp driver does;
``sev-isolation`` a guest launched with random pages, policy and ASID, then the
                  isolation properties: the host reads ciphertext, equal
                  plaintext blocks encrypt differently at different addresses
                  (the address tweak), plaintext the host injects decrypts to
                  garbage for the guest, and the guest's memory key, TEK and
                  TIK appear neither in DRAM, nor in the mailbox window, nor in
                  the machine's notes, serial output or trace events.

Invariants: every command returns a documented status at once (no command
runs more than COMMAND_SECONDS), no exception, no status 70; for
sev-isolation the properties above."""
import io
import struct
import time

from .driver import Campaign, Failure, campaign
from . import kernels as K
from ..machine import Machine, STATUS_INTERNAL
from ..sev.api import COMMAND_LAYOUTS, SevCmd, SevStatus, pack_buffer
from ..sev import snp_api

COMMAND_SECONDS = 10.0
MEM = 32 << 20
MAILBOX = K.PSP_MMIO + K.CMDRESP
SEV_LAYOUT = {
    SevCmd.INIT: "init", SevCmd.INIT_EX: "init_ex", SevCmd.SHUTDOWN: "handle",
    SevCmd.PLATFORM_RESET: "handle", SevCmd.PLATFORM_STATUS: "status", SevCmd.PEK_GEN: "handle",
    SevCmd.PEK_CSR: "addr_len", SevCmd.PEK_CERT_IMPORT: "pek_cert_import", SevCmd.PDH_GEN: "handle",
    SevCmd.PDH_CERT_EXPORT: "pdh_cert_export", SevCmd.DF_FLUSH: "handle", SevCmd.GET_ID: "addr_len",
    SevCmd.DOWNLOAD_FIRMWARE: "addr_len", SevCmd.DECOMMISSION: "handle", SevCmd.ACTIVATE: "activate",
    SevCmd.DEACTIVATE: "handle", SevCmd.GUEST_STATUS: "guest_status", SevCmd.LAUNCH_START: "launch_start",
    SevCmd.LAUNCH_UPDATE_DATA: "update", SevCmd.LAUNCH_UPDATE_VMSA: "update", SevCmd.LAUNCH_MEASURE: "update",
    SevCmd.LAUNCH_SECRET: "packet", SevCmd.LAUNCH_FINISH: "handle", SevCmd.ATTESTATION_REPORT: "update",
    SevCmd.SEND_START: "send_start", SevCmd.SEND_UPDATE_DATA: "packet", SevCmd.SEND_UPDATE_VMSA: "packet",
    SevCmd.SEND_FINISH: "handle", SevCmd.SEND_CANCEL: "handle", SevCmd.RECEIVE_START: "receive_start",
    SevCmd.RECEIVE_UPDATE_DATA: "packet", SevCmd.RECEIVE_UPDATE_VMSA: "packet",
    SevCmd.RECEIVE_FINISH: "handle", SevCmd.DBG_DECRYPT: "dbg", SevCmd.DBG_ENCRYPT: "dbg",
}
C = snp_api.SnpCmd
SNP_LAYOUT = {
    C.INIT: "addr", C.SHUTDOWN: "addr", C.PLATFORM_STATUS: "addr", C.DF_FLUSH: "addr",
    C.INIT_EX: "init_ex", C.SHUTDOWN_EX: "shutdown_ex", C.DECOMMISSION: "addr", C.ACTIVATE: "activate",
    C.GUEST_STATUS: "guest_status", C.GCTX_CREATE: "addr", C.GUEST_REQUEST: "guest_request",
    C.ACTIVATE_EX: "activate", C.LAUNCH_START: "launch_start", C.LAUNCH_UPDATE: "launch_update",
    C.LAUNCH_FINISH: "launch_finish", C.DBG_DECRYPT: "dbg", C.DBG_ENCRYPT: "dbg", C.PAGE_RECLAIM: "page",
    C.PAGE_UNSMASH: "page", C.PAGE_SET_STATE: "page", C.CONFIG: "config", C.PAGE_MOVE: "dbg",
    C.PAGE_SWAP_OUT: "dbg", C.PAGE_SWAP_IN: "dbg", C.PAGE_MD_INIT: "page", C.COMMIT: "addr",
    C.VLEK_LOAD: "addr", C.DOWNLOAD_FIRMWARE_EX: "addr",
}
LENGTHS = [0, 1, 15, 16, 64, 128, 4096, 4097, 0x10000, 1 << 20, 0x7FFFFFF0, 0x80000000, 0xFFFFFFFF]


def _addresses(rnd):
    page = 0x200000 + 0x1000 * rnd.randrange(64)
    return [page, page, page + rnd.randrange(0x1000), MEM - 16, MEM - 0x1000, MEM, MEM + (4 << 20),
            MAILBOX, MAILBOX & ~0xFFF, 0xFEE00000, 0xFFFFF000, (1 << 47) | page, (1 << 64) - 16, 0]


def _field(rnd, name, size):
    """A value for a buffer field, chosen by its name."""
    if size is None:                                  # a byte string field
        return None
    bits = 8 * size
    if "addr" in name or name in ("address", "paddr", "base"):
        v = rnd.choice(_addresses(rnd))
    elif "len" in name or name in ("page_count", "num_elements"):
        v = rnd.choice(LENGTHS)
    elif name == "handle":
        v = rnd.choice((1, 1, 2, 3, 0, 0xFFFFFFFF))
    elif name == "asid":
        v = rnd.choice((1, 5, 6, 15, 16, 0, 0xFFFFFFFF))
    elif name == "policy":
        v = rnd.choice((0, 1, 4, 5, 0x30000, 0x31000, rnd.getrandbits(32)))
    elif name.startswith("_r"):
        v = rnd.choice((0, 0, 0, rnd.getrandbits(bits)))
    else:
        v = rnd.choice((0, 1, rnd.getrandbits(bits), (1 << bits) - 1))
    return v & ((1 << bits) - 1)


def _sizes(fmt):
    out = []
    import re
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt):
        out.append(None if code == "s" else struct.calcsize("<" + code))
    return out


def gen_buffer(rnd, layouts, layout):
    fmt, names = layouts[layout]
    values = []
    for name, size in zip(names, _sizes(fmt)):
        v = _field(rnd, name, size)
        values.append(v if v is not None else bytes(rnd.getrandbits(8) for _ in range(4)))
    return struct.pack(fmt, *values)


def gen_commands(rnd, snp: bool):
    cmds = []
    if rnd.random() < 0.8:
        cmds.append((int(SevCmd.INIT), pack_buffer("init"), "ram"))
    if snp and rnd.random() < 0.5:
        cmds.append((int(C.INIT), bytes(8), "ram"))
    if cmds and rnd.random() < 0.5:                  # a valid launch first, to reach later states
        cmds.append((int(SevCmd.LAUNCH_START), pack_buffer("launch_start", policy=rnd.choice((0, 1))), "ram"))
        cmds.append((int(SevCmd.LAUNCH_UPDATE_DATA), pack_buffer("update", handle=1, address=0x200000,
                                                                 len=4096), "ram"))
        if rnd.random() < 0.5:
            cmds.append((int(SevCmd.ACTIVATE), pack_buffer("activate", handle=1, asid=rnd.choice((5, 6))), "ram"))
    for _ in range(rnd.choice((1, 3, 6, 12))):
        if snp and rnd.random() < 0.4:
            cmd = rnd.choice(list(SNP_LAYOUT))
            buf = gen_buffer(rnd, snp_api.LAYOUTS, SNP_LAYOUT[cmd])
        elif rnd.random() < 0.05:
            cmd, buf = rnd.randrange(0x800), bytes(rnd.getrandbits(8) for _ in range(64))
        else:
            cmd = rnd.choice(list(SEV_LAYOUT))
            buf = gen_buffer(rnd, COMMAND_LAYOUTS, SEV_LAYOUT[cmd])
        where = rnd.choice(("ram", "ram", "ram", "ram", "ram-end", "beyond", "mailbox", "apic", "unaligned"))
        cmds.append((int(cmd), buf, where))
    return cmds


def _buffer_pa(where, i):
    return {"ram": 0x100000 * 0 + 0x600000 + 0x1000 * i, "ram-end": MEM - 24, "beyond": MEM + 0x1000,
            "mailbox": MAILBOX, "apic": 0xFEE00000, "unaligned": 0x600000 + 0x1000 * i + 0xFFD}[where]


def _known(status: int) -> bool:
    return status in SevStatus._value2member_map_


def _name(cmd):
    for enum in (SevCmd, C):
        try:
            return enum(cmd).name
        except ValueError:
            pass
    return f"{cmd:#x}"


@campaign
class SevApi(Campaign):
    name = "sev-api"
    description = "SEV and SEV-SNP firmware commands through the Python API: states, handles, bad buffers"

    def generate(self, rnd):
        snp = rnd.random() < 0.4
        return {"cpu": "epyc-genoa" if snp else "epyc", "commands": gen_commands(rnd, snp)}

    def execute(self, inp):
        with Machine(mem_size=MEM, cpu=inp["cpu"]) as m:
            fw = m.amd_sp
            last_ok = "none"
            for i, (cmd, buf, where) in enumerate(inp["commands"]):
                pa = _buffer_pa(where, i)
                if pa + len(buf) <= MEM:
                    m.bus.write_bytes(pa, buf)
                t = time.monotonic()
                status = fw.command(cmd, pa)
                took = time.monotonic() - t
                if took > COMMAND_SECONDS:
                    raise Failure(f"{_name(cmd)} ran {took:.0f} s")
                if not isinstance(status, int) or not _known(status):
                    raise Failure(f"{_name(cmd)} returned {status!r}, not a firmware status")
                if status == SevStatus.SUCCESS:
                    last_ok = _name(cmd)
        return f"last SUCCESS: {last_ok}"


@campaign
class SevMailbox(Campaign):
    name = "sev-mailbox"
    description = "the same command sequences from guest code through the PSP mailbox registers"

    def generate(self, rnd):
        return SevApi.generate(self, rnd)

    def execute(self, inp):
        import os
        import tempfile
        cmds = inp["commands"]
        # buffers in RAM ride in the kernel image; the others are addresses
        listed = [(cmd, buf if where == "ram" else _buffer_pa(where, i)) for i, (cmd, buf, where) in enumerate(cmds)]
        with Machine(mem_size=MEM, cpu=inp["cpu"]) as m, tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.bin")
            with open(path, "wb") as f:
                f.write(K.mailbox_kernel(listed))
            m.load_kernel(path)
            for i, (cmd, buf, where) in enumerate(cmds):
                pa = _buffer_pa(where, i)
                if where != "ram" and pa + len(buf) <= MEM:
                    m.bus.write_bytes(pa, buf)
            m.uart.out = out = io.BytesIO()
            r = m.run(max_insns=2_000_000, timeout=60, max_virtual_ns=10_000_000_000)
        if r.status == STATUS_INTERNAL:
            raise Failure(r.reason)
        if r.status != 1:
            raise Failure(f"the mailbox kernel did not finish: {r.reason}")
        words = [int(w, 16) for w in out.getvalue().split()]
        if len(words) != len(cmds) or any(not w >> 31 or not _known(w & 0xFFFF) for w in words):
            raise Failure(f"mailbox answers {[hex(w) for w in words]} for {len(cmds)} commands")
        return f"{sum(1 for w in words if w & 0xFFFF == 0)}/{len(cmds)} SUCCESS"


@campaign
class SevIsolation(Campaign):
    name = "sev-isolation"
    description = "a launched SEV guest: ciphertext to the host, address tweak, injected plaintext, keys hidden"

    def generate(self, rnd):
        block = bytes(rnd.getrandbits(8) for _ in range(16))
        pages = []
        for _ in range(rnd.choice((1, 2, 4))):
            kind = rnd.choice(("random", "repeat", "zero", "text"))
            if kind == "random":
                data = bytes(rnd.getrandbits(8) for _ in range(4096))
            elif kind == "repeat":
                data = block * 256
            elif kind == "zero":
                data = bytes(4096)
            else:
                data = (b"secret disk key %08x " % rnd.getrandbits(32)) * 160
            pages.append((0x200000 + 0x1000 * rnd.randrange(1024), data[:4096].ljust(4096, b"\0")))
        return {"pages": pages, "asid": rnd.randrange(5, 16), "policy": rnd.choice((0, 1, 3)),
                "inject": bytes(rnd.getrandbits(8) for _ in range(64)), "deactivate": rnd.random() < 0.3}

    def execute(self, inp):
        from ..trace import Tracer
        pages = {pa: data for pa, data in inp["pages"]}       # a later page at the same address wins
        asid = inp["asid"]
        with Machine(mem_size=MEM, cpu="epyc") as m:
            m.uart.out = serial = io.BytesIO()
            events = io.StringIO()
            m.listeners.append(Tracer(m, None, "all", events, "all", "jsonl"))
            fw = m.amd_sp
            buf = 0x100000

            def cmd(c, layout, **fields):
                m.bus.write_bytes(buf, pack_buffer(layout, **fields))
                s = fw.command(c, buf)
                if s != SevStatus.SUCCESS:
                    raise Failure(f"{_name(c)} failed with {SevStatus(s).name} in a valid launch")

            cmd(SevCmd.INIT, "init")
            cmd(SevCmd.LAUNCH_START, "launch_start", policy=inp["policy"])
            handle = max(fw.guests)
            for pa, data in pages.items():
                m.bus.write_bytes(pa, data)
                cmd(SevCmd.LAUNCH_UPDATE_DATA, "update", handle=handle, address=pa, len=len(data))
            cmd(SevCmd.ACTIVATE, "activate", handle=handle, asid=asid)
            g = fw.guests[handle]
            ram = m.bus.ram
            rd = lambda spa, n: m.bus.read_bytes(spa, n)        # noqa: E731 (DRAM, as the host reads it)
            eng = m.mem_engine
            for pa, data in pages.items():
                dram = m.bus.read_bytes(pa, len(data))
                for off in range(0, len(data), 16):
                    blk = data[off:off + 16]
                    if dram[off:off + 16] == blk:
                        raise Failure(f"host reads plaintext at {pa + off:#x}")
                seen = {}
                for off in range(0, len(data), 16):           # the address tweak (APM vol 2, 7.10.x)
                    key = data[off:off + 16]
                    if key in seen and dram[seen[key]:seen[key] + 16] == dram[off:off + 16]:
                        raise Failure(f"equal plaintext at {pa + seen[key]:#x} and {pa + off:#x} "
                                      f"encrypts equally")
                    seen.setdefault(key, off)
                if eng.read(rd, pa, len(data), asid) != data:
                    raise Failure(f"the guest does not read its own page {pa:#x}")
            victim = next(iter(pages))
            m.bus.write_bytes(victim, inp["inject"])            # the host's plaintext, C = 0
            if eng.read(rd, victim, len(inp["inject"]), asid) == inp["inject"]:
                raise Failure("plaintext injected by the host decrypts to itself in the guest")
            if inp["deactivate"]:
                cmd(SevCmd.DEACTIVATE, "handle", handle=handle)
            m.run(max_insns=100)                                 # a short run, traced
            secrets = [eng._slots.get(asid), g.vek, g.tek, g.tik]
            secrets = [s for s in secrets if s]
            window = b"".join(m.bus.read(K.PSP_MMIO + off, 4).to_bytes(4, "little")
                              for off in range(0x10000, 0x10A00, 4))
            text = " ".join(m.notes).encode() + serial.getvalue() + events.getvalue().encode()
            for s in secrets:
                if ram.buf.find(s, 0, ram.size) >= 0:
                    raise Failure("a guest key is in DRAM")
                if s in window:
                    raise Failure("a guest key is readable in the mailbox window")
                if s in text or s.hex().encode() in text:
                    raise Failure("a guest key is in the notes, serial output or trace")
        return "isolated" + (" (deactivated)" if inp["deactivate"] else "")
