"""The host side of COM1 when no file is given: whatever ``sys.stdout`` is at
the moment of writing.  A terminal or a pipe gets the guest's bytes as they
are (through ``sys.stdout.buffer``); a text-only stream (a Jupyter cell,
``io.StringIO``, pytest's capture) gets them decoded as UTF-8, so a Machine
works in a notebook without any setup."""
import codecs
import sys


class StdoutConsole:
    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> None:
        out = sys.stdout
        if out is None:
            return
        buf = getattr(out, "buffer", None)
        if buf is not None:
            buf.write(data)
        else:
            text = self._decoder.decode(data)
            if text:
                out.write(text)

    def flush(self) -> None:
        out = sys.stdout
        if out is None:
            return
        target = getattr(out, "buffer", out)
        flush = getattr(target, "flush", None)
        if flush is not None:
            flush()
