"""Debugging svmsim's guests: the resumable Python API (``api``), breakpoints,
watchpoints and hooks (``control``), registers (``regs``), side-effect-free
memory access and page walks (``memory``), disassembly and symbols, crash
reports (``report``), and the gdb remote stub (``gdbstub``)."""
