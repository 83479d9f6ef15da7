"""The admin sessions this process has opened: a signed cookie counts only while its session is here.

The session cookie is Flask's (signed, so a visitor cannot make one up), but a signature alone
would keep a copied cookie good until it expires, logout or not. So a login opens a session
here under a random id that the cookie carries; logout closes it, and a cookie whose id is not
open here is not logged in. Each session remembers the password it was opened under (as a
fingerprint): once the admin password changes, every older session is over.

Bounded and forgetful on purpose: at most MAX_SESSIONS (a login beyond them closes the session
used longest ago), each for at most its max age, in memory only, so a restart of the service
ends every session; nothing can bring back one that was closed.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable

MAX_SESSIONS = 64


class AdminSessions:
    def __init__(self, max_age: float, limit: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic):
        self.max_age, self.limit, self.clock = max_age, limit, clock
        self._open: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()  # id -> (fingerprint, ends at)

    def open(self, fingerprint: str) -> str:
        """A new session's id; the one used longest ago is closed when there are `limit` already."""
        now = self.clock()
        for sid, (held, ends) in list(self._open.items()):
            if ends <= now or held != fingerprint:
                del self._open[sid]
        while len(self._open) >= self.limit:
            self._open.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._open[sid] = (fingerprint, now + self.max_age)
        return sid

    def valid(self, sid: str | None, fingerprint: str) -> bool:
        """Whether `sid` is open, not over its age, and opened under the current password."""
        entry = self._open.get(sid) if isinstance(sid, str) else None
        if entry is None:
            return False
        held, ends = entry
        if ends <= self.clock() or held != fingerprint:
            del self._open[sid]
            return False
        self._open.move_to_end(sid)
        return True

    def close(self, sid: str | None) -> None:
        if isinstance(sid, str):
            self._open.pop(sid, None)

    def close_all(self) -> None:
        self._open.clear()

    def __len__(self) -> int:
        return len(self._open)
