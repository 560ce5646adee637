"""Errors svmsim raises to its *user* (never to the guest).

Guest mistakes become architectural events (#GP, #PF, shutdown...), see
``svmsim.cpu.exceptions``.  The classes here are for the person running svmsim:
a bad kernel file, a bad option, a feature svmsim does not model yet.
"""


class SvmsimError(Exception):
    """A user-facing error: the CLI prints it as one line and exits non-zero."""


class LoadError(SvmsimError):
    """The kernel or a module could not be loaded (not Multiboot, bad ELF...)."""


class ConfigError(SvmsimError):
    """A machine option is invalid (memory size, CPU count, profile name...)."""


class NotModelled(SvmsimError, NotImplementedError):
    """A feature svmsim does not model yet; the message names it."""
