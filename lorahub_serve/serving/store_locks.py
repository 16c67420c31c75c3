"""Many writers on one store: file locks, server membership, and publishing a folder once.

Several `serve` processes (Ray Serve replicas, or two servers started on one store by mistake)
share one store folder. They coordinate through the filesystem alone, with `flock(2)` locks the
kernel drops when a process dies (`kill -9` included), so nothing is ever left locked:

- `store_lock(jobs_dir)`: one short exclusive lock for every read-modify-write of job records
  (submit, claim, lease renewal, cancel, forget); `.jobs/.lock`;
- `name_lock(jobs_dir, name)`: one lock per composition name, held while it is built, so two
  servers asked for the same composition at once build it once; `.jobs/locks/<name>.lock`;
- `Membership`: each live server holds an exclusive lock on `.jobs/members/<token>.lock` for its
  whole life. A job record names its owner's token; the owner is alive exactly while that lock is
  held (`Membership.alive`), so a job whose server died is taken over at once, and one whose
  server lives is never run twice;
- `publish_dir(tmp, target)`: rename a finished folder into place only if `target` does not
  exist, so a second writer never replaces (or half-replaces) the first one's folder.

On a multi-node cluster the store must be on a filesystem whose `flock` is honoured across nodes
(NFSv4, CephFS, Lustre with flock on); job leases (`lease_until` in the record) are the fallback
that ends a lost owner's claim on filesystems where it is not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

LOCKS_DIR = "locks"
MEMBERS_DIR = "members"


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def store_lock(jobs_dir: Path):
    """Exclusive lock over the job records of one store (hold it for milliseconds)."""
    return _flock(Path(jobs_dir) / ".lock")


def name_lock(jobs_dir: Path, name: str):
    """Exclusive lock on one adapter name (a composition being built)."""
    return _flock(Path(jobs_dir) / LOCKS_DIR / f"{name}.lock")


class Membership:
    """This server's presence on a store: an exclusive lock held from `join` to `leave`."""

    def __init__(self, jobs_dir: Path):
        self.dir = Path(jobs_dir) / MEMBERS_DIR
        self.token = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._fd: int | None = None

    def join(self) -> None:
        if self._fd is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / f"{self.token}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def leave(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{self.token}.lock").unlink()
        os.close(self._fd)
        self._fd = None

    def alive(self, token: str | None) -> bool:
        """Whether the server `token` still holds its membership lock (this one: while joined)."""
        if not token:
            return False
        if token == self.token:
            return self._fd is not None
        path = self.dir / f"{token}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # its owner holds it
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead member's file: nobody holds it
        return False

    def others_alive(self) -> bool:
        """Whether any other server is joined to this store now."""
        if not self.dir.is_dir():
            return False
        others = [p.stem for p in self.dir.glob("*.lock") if p.stem != self.token]
        alive = [self.alive(t) for t in others]  # each call removes a dead member's file
        return any(alive)


def publish_dir(tmp: Path, target: Path) -> bool:
    """Move the finished folder `tmp` to `target` unless `target` exists; True if it was moved.

    A rename onto an existing non-empty folder fails on POSIX, so of two writers racing on one
    name exactly one folder lands, whole; the loser's copy is removed.
    """
    tmp, target = Path(tmp), Path(target)
    if not target.exists():
        try:
            os.rename(tmp, target)
            return True
        except OSError:  # ENOTEMPTY/EEXIST: another writer got there between the check and now
            if not target.exists():
                raise
    shutil.rmtree(tmp, ignore_errors=True)
    return False
