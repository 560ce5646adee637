"""Run instruction snippets on the host CPU (the hardware oracle's worker).

Started by tests/native_oracle.py as a subprocess (so a snippet that faults
kills only this process, not pytest).  Protocol on stdin/stdout, one line per
case: ``stub_hex state_hex`` in, ``state_hex`` (or ``FAULT``) out.  The stub
(built by native_oracle.build_stub) loads the state block, runs the snippet
and stores the state block back: XSAVE area (x87, SSE, AVX), GPRs, RFLAGS
and a scratch memory area that RSI points to.
"""
import ctypes
import mmap
import sys

STATE_SIZE = 0x800
SCRATCH_OFF = 0x500


def main():
    code_map = mmap.mmap(-1, 0x10000, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code_addr = ctypes.addressof(ctypes.c_char.from_buffer(code_map))
    raw = ctypes.create_string_buffer(STATE_SIZE + 64)
    base = (ctypes.addressof(raw) + 63) & ~63
    fn_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    for line in sys.stdin:
        stub_hex, state_hex = line.split()
        stub = bytes.fromhex(stub_hex)
        state = bytearray.fromhex(state_hex)
        # RSI (GPR 6) points at the scratch area of this process.
        state[0x430:0x438] = (base + SCRATCH_OFF).to_bytes(8, "little")
        code_map.seek(0)
        code_map.write(stub)
        ctypes.memmove(base, bytes(state), STATE_SIZE)
        fn_type(code_addr)(base)
        out = ctypes.string_at(base, STATE_SIZE)
        sys.stdout.write(out.hex() + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
