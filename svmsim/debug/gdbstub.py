"""A gdb remote stub: ``svmsim run KERNEL --gdb tcp::1234`` (``-s``), ``-S``
to wait for gdb before the first instruction, as QEMU's flags.

The remote serial protocol (gdb manual, appendix "GDB Remote Serial
Protocol"): packets ``$data#cs`` acknowledged with ``+``, Ctrl-C as a bare
0x03 byte while the target runs.  Supported: ``?``, ``g``/``G``, ``p``/``P``,
``m``/``M``, ``c``, ``s``, ``Z0``-``Z4``/``z0``-``z4``, ``H``, ``T``, ``D``,
``k``, ``qSupported``, ``qXfer:features:read`` (target.xml), thread queries
(one thread per CPU, thread id = CPU index + 1), ``qRcmd`` (``monitor``,
see monitor.py), ``QStartNoAckMode`` and QEMU's ``Qqemu.PhyMemMode``.

Breakpoints of both kinds (Z0 software, Z1 hardware) are the debugger's
(control.py): guest memory is never patched with INT3, so a checksum or a
#VMEXIT's instruction bytes never see one.  Watchpoints (Z2 write, Z3 read,
Z4 access) stop after the instruction, as x86 data breakpoints do.  Every
stop is announced on gdb's console with where the CPU is (host or guest,
ASID) before the stop reply.

One thread, no background activity: while the machine runs, the socket is
polled between rounds (``machine.pollers``) for Ctrl-C.
"""
import logging
import select
import socket

from . import memory, regs as regs_mod
from .monitor import Monitor
from .report import world, cpu_mode, symbolize
from .target_xml import target_xml

log = logging.getLogger(__name__)

SIGINT, SIGTRAP = 2, 5
FINAL_SIGNALS = {"shutdown": 9, "not-modelled": 4, "internal-error": 6}


def parse_address(spec: str):
    """QEMU's ``-gdb`` syntax: ``tcp::1234``, ``tcp:HOST:1234``, ``:1234`` or
    ``1234``.  An empty host means localhost (QEMU listens on every
    interface; svmsim does not expose a debugger to the network unless asked)."""
    s = spec[4:] if spec.startswith("tcp:") else spec
    host, _, port = s.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ValueError(f"bad --gdb address {spec!r} (use tcp::PORT or tcp:HOST:PORT)") from None


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


class GdbKilled(Exception):
    """gdb sent ``k``: svmsim ends."""


class GdbServer:
    """Serves one gdb at a time on a TCP socket; drives the machine."""

    def __init__(self, machine, host="127.0.0.1", port=1234):
        self.machine = machine
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.conn = None
        self.ack = True
        self.monitor = Monitor(machine, on_scope=self._rescope)
        self.g_cpu = 0                    # Hg: registers and memory
        self.c_cpu = None                 # Hc: step (None: any)
        self.points = {}                  # (type, addr, kind) -> Breakpoint/Watchpoint
        self._inbuf = b""
        self._interrupted = False
        self._ack_off = False
        machine.pollers.append(self._poll)

    # ---------------------------------------------------------------- connection
    def accept(self, block=True) -> bool:
        if not block:
            r, _, _ = select.select([self.listener], [], [], 0)
            if not r:
                return False
        self.conn, peer = self.listener.accept()
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ack, self._inbuf = True, b""
        log.info("gdb connected from %s:%d", *peer)
        return True

    def _poll(self) -> None:
        """Between rounds: a gdb connecting stops the machine (as QEMU does);
        a connected gdb's Ctrl-C stops it."""
        m = self.machine
        if self.conn is None:
            if self.accept(block=False):
                m.pause("stopped", "gdb attached", m.current_cpu.index)
            return
        r, _, _ = select.select([self.conn], [], [], 0)
        if r:
            data = self.conn.recv(4096)
            if not data:
                self._drop()
                return
            if b"\x03" in data:
                self._interrupted = True
                m.pause("stopped", "interrupted by gdb (Ctrl-C)", m.current_cpu.index)
                data = data.replace(b"\x03", b"")
            self._inbuf += data

    def _drop(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def close(self):
        self._drop()
        self.listener.close()
        if self._poll in self.machine.pollers:
            self.machine.pollers.remove(self._poll)

    # ---------------------------------------------------------------- driving the machine
    def serve(self, result=None, wait=False):
        """Run the machine under gdb's control until it ends; returns the final
        RunResult.  ``wait``: wait for gdb before the first instruction (-S)."""
        m = self.machine
        if wait:
            self.accept()
        elif result is None:
            result = m.run()
        while True:
            if self.conn is None:
                if result is not None and not result.resumable:
                    return result
                result = m.run()
                if self.conn is None:
                    return result
                continue
            result = self._session(result)
            if result is not None and not result.resumable:
                return result

    def _session(self, result):
        """Answer packets until gdb resumes the machine, then report the stop;
        returns when gdb detaches or the machine has ended."""
        last = self._stop_reply(result)
        while self.conn is not None:
            packet = self._read_packet()
            if packet is None:
                self._drop()
                return result
            reply = self._handle(packet, last)
            if isinstance(reply, tuple):           # resume: ("c" | "s", cpu)
                result = self._resume(*reply)
                last = self._stop_reply(result)
                self._announce(result)
                self._send(last.encode())
                if not result.resumable:
                    self._drop()
                    return result
                continue
            if reply is None:                      # detached or killed
                return result
            self._send(reply.encode() if isinstance(reply, str) else reply)
            if self._ack_off:
                self.ack = self._ack_off = False
        return result

    def _resume(self, how, cpu):
        self._interrupted = False
        m = self.machine
        if how == "s":
            return m.step(1, cpu if cpu is not None else self.g_cpu)
        return m.run()

    def _stop_reply(self, result) -> str:
        m = self.machine
        if result is not None and not result.resumable:
            if result.kind == "debug-exit":
                return f"W{result.status & 0xFF:02x}"
            return f"X{FINAL_SIGNALS.get(result.kind, 9):02x}"
        cpu = result.cpu if result is not None and result.cpu is not None else m.current_cpu.index
        self.g_cpu = cpu
        sig = SIGINT if self._interrupted or (result is not None and result.kind == "interrupted") else SIGTRAP
        reply = f"T{sig:02x}thread:{cpu + 1:x};"
        if result is not None and result.kind == "breakpoint":
            point = next((k for k in self.points if k[1] == result.address and k[0] in "01"), None)
            reply += "hwbreak:;" if point and point[0] == "1" else "swbreak:;"
        elif result is not None and result.kind == "watchpoint":
            point = next((k for k, v in self.points.items() if k[0] in "234" and v.address == result.address), None)
            reply += {"2": "watch", "3": "rwatch", "4": "awatch"}[point[0] if point else "2"] + \
                f":{result.address:x};"
        return reply

    def _announce(self, result):
        """Where the machine stopped, on gdb's console (an O packet); not for a
        single step (gdb shows where a step ends, and steps over breakpoints itself)."""
        m = self.machine
        if result.kind == "step":
            return
        if result.resumable:
            c = m.cpus[result.cpu if result.cpu is not None else m.current_cpu.index]
            text = (f"svmsim: cpu{c.index} stopped ({result.reason}) in {world(c)}, {cpu_mode(c)}, "
                    f"rip={symbolize(m, c.rip)}\n")
        else:
            text = f"svmsim: the machine ended: {result.reason} (status {result.status})\n"
        self._console(text)

    def _console(self, text):
        for i in range(0, len(text), 400):
            self._send(b"O" + text[i:i + 400].encode().hex().encode())

    # ---------------------------------------------------------------- packets
    def _read_packet(self):
        """The next packet's payload (bytes), or None when gdb hung up."""
        while True:
            buf = self._inbuf
            start = buf.find(b"$")
            if start >= 0:
                end = buf.find(b"#", start)
                if end >= 0 and len(buf) >= end + 3:
                    payload, cs = buf[start + 1:end], buf[end + 1:end + 3]
                    self._inbuf = buf[end + 3:]
                    if self.ack:
                        good = int(cs, 16) == checksum(payload)
                        self.conn.sendall(b"+" if good else b"-")
                        if not good:
                            continue
                    return _unescape(payload)
            elif buf.replace(b"+", b"").replace(b"-", b"").replace(b"\x03", b"") == b"":
                self._inbuf = b""
            data = self.conn.recv(4096)
            if not data:
                return None
            self._inbuf += data

    def _send(self, data: bytes) -> None:
        packet = b"$" + data + b"#%02x" % checksum(data)
        self.conn.sendall(packet)
        if self.ack:
            while True:
                c = self.conn.recv(1)
                if c in (b"+", b""):
                    return
                if c == b"-":
                    self.conn.sendall(packet)
                elif c == b"\x03":
                    self._interrupted = True

    # ---------------------------------------------------------------- commands
    def _handle(self, p: bytes, last: str):
        m = self.machine
        text = p.decode("latin-1")
        cmd = text[:1]
        if text == "?":
            return last
        if cmd == "g":
            return "".join(_reg_hex(r, m.cpus[self.g_cpu]) for r in regs_mod.GDB_REGS)
        if cmd == "G":
            return self._write_all(text[1:])
        if cmd == "p":
            n = int(text[1:], 16)
            if n >= len(regs_mod.GDB_REGS):
                return "E45"
            return _reg_hex(regs_mod.GDB_REGS[n], m.cpus[self.g_cpu])
        if cmd == "P":
            n, _, value = text[1:].partition("=")
            return self._write_reg(int(n, 16), bytes.fromhex(value))
        if cmd == "m":
            addr, _, length = text[1:].partition(",")
            return self._read_mem(int(addr, 16), int(length, 16))
        if cmd == "M":
            where, _, data = text[1:].partition(":")
            addr = int(where.split(",")[0], 16)
            return self._write_mem(addr, bytes.fromhex(data))
        if cmd in "cs" and cmd:
            if len(text) > 1:
                m.cpus[self.c_cpu if self.c_cpu is not None else self.g_cpu].rip = int(text[1:], 16)
            return (cmd, self.c_cpu)
        if cmd in "CS" and cmd:
            return (cmd.lower(), self.c_cpu)
        if cmd in "Zz" and cmd:
            return self._point(cmd == "Z", text[1:])
        if cmd == "H":
            return self._set_thread(text[1:2], text[2:])
        if cmd == "T":
            return "OK" if 1 <= int(text[1:], 16) <= len(m.cpus) else "E01"
        if cmd == "D":
            self._clear_points()
            self._send(b"OK")
            self._drop()
            return None
        if cmd == "k":
            self._drop()
            raise GdbKilled()
        if text.startswith("qSupported"):
            return ("PacketSize=4000;qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+;"
                    "vContSupported-")
        if text.startswith("qXfer:features:read:target.xml:"):
            off, _, length = text.split(":")[4].partition(",")
            return _xfer(target_xml().encode(), int(off, 16), int(length, 16))
        if text == "QStartNoAckMode":
            self._ack_off = True                   # after this reply (acknowledged)
            return "OK"
        if text == "qfThreadInfo":
            return "m" + ",".join(f"{i + 1:x}" for i in range(len(m.cpus)))
        if text == "qsThreadInfo":
            return "l"
        if text == "qC":
            return f"QC{self.g_cpu + 1:x}"
        if text.startswith("qThreadExtraInfo,"):
            c = m.cpus[int(text.split(",")[1], 16) - 1]
            state = ", halted" if c.halted else ", waiting for SIPI" if c.wait_for_sipi else ""
            return f"cpu{c.index}: {world(c)}, {cpu_mode(c)}{state}".encode().hex()
        if text == "qAttached":
            return "1"
        if text.startswith("qRcmd,"):
            out = self.monitor.run(bytes.fromhex(text[6:]).decode())
            self.monitor.cpu_index = self.g_cpu
            self._console(out + ("\n" if not out.endswith("\n") else ""))
            return "OK"
        if text.startswith("Qqemu.PhyMemMode:"):
            self.monitor.phys = text.endswith("1")
            return "OK"
        if text == "qqemu.PhyMemMode":
            return "1" if self.monitor.phys else "0"
        return ""                                  # unsupported: gdb falls back

    def _set_thread(self, op, tid):
        t = int(tid, 16) if tid not in ("", "-1") else -1
        if t > len(self.machine.cpus):
            return "E01"
        cpu = None if t <= 0 else t - 1
        if op == "g":
            self.g_cpu = self.g_cpu if cpu is None else cpu
            self.monitor.cpu_index = self.g_cpu
        else:
            self.c_cpu = cpu
        return "OK"

    def _write_all(self, hexdata):
        data = bytes.fromhex(hexdata)
        cpu = self.machine.cpus[self.g_cpu]
        pos = 0
        for reg in regs_mod.GDB_REGS:
            n = reg.bits // 8
            chunk = data[pos:pos + n]
            pos += n
            if len(chunk) < n:
                break
            value = int.from_bytes(chunk, "little")
            if value != reg.get(cpu) & ((1 << reg.bits) - 1) and reg.set is not None:
                try:
                    reg.set(cpu, value)
                except ValueError as e:
                    log.warning("gdb register write %s=%#x refused: %s", reg.name, value, e)
                    return "E22"
        return "OK"

    def _write_reg(self, n, data):
        if n >= len(regs_mod.GDB_REGS):
            return "E45"
        reg = regs_mod.GDB_REGS[n]
        if reg.set is None:
            return "E01"
        try:
            reg.set(self.machine.cpus[self.g_cpu], int.from_bytes(data, "little"))
        except ValueError as e:
            self._console(f"svmsim: {reg.name}: {e}\n")
            return "E22"
        return "OK"

    def _read_mem(self, addr, length):
        cpu = self.machine.cpus[self.g_cpu]
        out = bytearray()
        for a, chunk in memory._pages(addr, length):
            try:
                if self.monitor.phys:
                    out += memory.peek_spa(cpu, a, chunk)
                else:
                    out += memory.read_virtual(cpu, a, chunk)
            except (memory.DebugMemoryError, ValueError):
                break
        return out.hex() if out else "E14"

    def _write_mem(self, addr, data):
        cpu = self.machine.cpus[self.g_cpu]
        try:
            if self.monitor.phys:
                memory.write_spa(cpu, addr, data)
            else:
                memory.write_virtual(cpu, addr, data)
        except (memory.DebugMemoryError, ValueError):
            return "E14"
        return "OK"

    def _point(self, insert, args):
        typ, addr, kind = args.split(",")[:3]
        key = (typ, int(addr, 16), int(kind, 16))
        dbg = self.machine.debug
        if typ not in "01234" or not typ:
            return ""
        if not insert:
            point = self.points.pop(key, None)
            if point is not None:
                (dbg.remove_breakpoint if typ in "01" else dbg.remove_watchpoint)(point)
            return "OK"
        if key in self.points:
            return "OK"
        if typ in "01":
            self.points[key] = dbg.add_breakpoint(key[1], self.monitor.scope)
        else:
            access = {"2": "w", "3": "r", "4": "rw"}[typ]
            self.points[key] = dbg.add_watchpoint(key[1], key[2], access, self.monitor.scope)
        return "OK"

    def _rescope(self, scope):
        """``monitor scope`` applies to every inserted breakpoint and watchpoint."""
        points = list(self.points)
        self._clear_points()
        for typ, addr, kind in points:
            self._point(True, f"{typ},{addr:x},{kind:x}")

    def _clear_points(self):
        dbg = self.machine.debug
        for (typ, _, _), point in self.points.items():
            (dbg.remove_breakpoint if typ in "01" else dbg.remove_watchpoint)(point)
        self.points.clear()


def _reg_hex(reg, cpu) -> str:
    value = reg.get(cpu) & ((1 << reg.bits) - 1)
    return value.to_bytes(reg.bits // 8, "little").hex()


def _xfer(data: bytes, off: int, length: int) -> bytes:
    chunk = data[off:off + length]
    return (b"l" if off + length >= len(data) else b"m") + escape(chunk)


def _unescape(payload: bytes) -> bytes:
    if b"}" not in payload:
        return payload
    out, it = bytearray(), iter(payload)
    for b in it:
        out.append(next(it) ^ 0x20 if b == 0x7D else b)
    return bytes(out)
