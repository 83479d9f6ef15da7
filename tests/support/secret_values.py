"""Bad values for the secret settings, and the check that a text holds no part of one (issue 15, item 7)."""

from __future__ import annotations

from greenservers.config.settings import DECLARATIONS, Settings, SettingsError

SECRETS = [s.name for s in DECLARATIONS if s.secret]
BAD_VALUES = {  # made of runs no name, message or page holds by chance
    "control character": "Qz7Kx\u0007Wv3Jp9",
    "space": "Qz7Kx Wv3Jp9",
    "over-long": "Qz7KxWv3Jp" * 14,  # 140 characters: over every secret's limit
    "non-ASCII": "Qz7Kxé-Wv3Jp9",
    "a number": 31415926,
    "a list": ["Qz7Kx", "Wv3Jp9"],
    "not a hash": "plainQz7KxWv3",
}
GOOD_COMMUNITY, GOOD_LDAP_PASSWORD = "Gd5Rm8Tc1", "Lp4Nq6Hs2"


def leaks(text: str, value) -> bool:
    """True when `text` holds any five characters in a row of `value` (as text or as its repr)."""
    return any(shown[i:i + 5] in text for shown in {str(value), repr(value)[1:-1]} for i in range(len(shown) - 4))


def refused(name: str) -> dict[str, object]:
    """The bad values `name`'s validator refuses, by label."""
    found = {}
    for label, value in BAD_VALUES.items():
        try:
            Settings.from_raw({name: value})
        except SettingsError:
            found[label] = value
    return found
