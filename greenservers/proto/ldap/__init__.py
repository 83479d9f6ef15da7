"""The LDAPv3 address-book server, sans-IO: bytes in, response bytes and events out.

The package, module by module:

- `codes`: result codes, protocol op tags, filter choices, OIDs, the server's limits, `LdapError`.
- `schema`: attribute types and aliases; how names and phone numbers are folded and compared.
- `dn`: distinguished names (RFC 4514).
- `entries`: the Root DSE, the base entry, a contact's entry as an object; `contact_values`.
- `filters`: filters decoded within a budget of units, and compiled to a three-valued predicate.
- `messages`: typed requests, encoded responses, and the events a session gives its shell.
- `index`: the directory's storage (a blob per contact) and index structures.
- `directory`: `Directory`, the contacts' entries and indexes, changed one contact at a time.
- `search`: `SearchCursor` and the steps of a search (find, sort, encode), paged results.
- `limits`: fair shares of search time, buffered bytes, the bind throttle, connection caps.
- `session`: `LdapSession`, one connection's state machine and operations.

A shell (greenservers/shells/ldap.py) feeds a session the bytes it receives,
sends the bytes it returns, acts on its events and runs each search's cursor
a slice at a time. The names a shell, the address book and the tests use are
importable from this package itself.
"""

from __future__ import annotations

# the names the shell, the address book and the tests use, importable from the package itself
from .codes import *  # noqa: F403
from .directory import *  # noqa: F403
from .dn import *  # noqa: F403
from .entries import *  # noqa: F403
from .filters import *  # noqa: F403
from .limits import *  # noqa: F403
from .messages import *  # noqa: F403
from .schema import *  # noqa: F403
from .search import *  # noqa: F403
from .session import *  # noqa: F403
