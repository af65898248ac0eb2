"""The one error a library's private internals raise when they no longer look as we rely on.

Where a library has no public API for something foresight needs, the private access lives in
one small `<stage>/compat/<library>.py` module with a `check()`; a unit test calls it against the
installed library, so an upgrade that changes the internal fails there, naming the library and
its version, instead of misbehaving quietly in a running worker.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


class LibraryInternalsChanged(RuntimeError):
    """A private attribute or shape that a compat module relies on is gone or different."""


def installed_version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "(not installed)"


def require(distribution: str, holds: bool, what: str, module: str) -> None:
    """Raise `LibraryInternalsChanged` naming `distribution` and its installed version unless `holds`."""
    if not holds:
        raise LibraryInternalsChanged(
            f"{distribution} {installed_version(distribution)}: {what}. The private access in {module} "
            f"must be updated for this version (or {distribution} pinned to one it was written for).")
