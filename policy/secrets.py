"""Does a text look like it holds a secret? Code mode's `refuse_secrets` refuses an upstream
result that does before it reaches the sandbox.

A guard against accidental leaks (a key file read, a token in a config dump), not a barrier
against an upstream that means to leak: anything encoded (base64, split, reversed) passes. Scan
the text as the sandbox would read it (decoded strings), not its JSON escaping.

Bounded work: only the first `SCAN_LIMIT` characters (4 Mi: no policy lets a larger result
through) are read, and every pattern runs in linear time. A token pattern only matches where the
character before cannot belong to it (a lookbehind excluding its own alphabet), so no two attempts
scan the same run, and its repetitions are possessive or bounded, so none backtracks; an attempt
at a key name that fails does so within a few dozen characters.
"""

from __future__ import annotations

import math
import re
from collections import Counter

__all__ = ["SCAN_LIMIT", "SECRET_KINDS", "looks_like_secret"]

SCAN_LIMIT = 4 * 1024 * 1024

#: Each token pattern starts with its literal (so the search skips ahead fast), then checks that
#: the character before it cannot belong to the token: `(?<![class]LITERAL)`.
_TOKENS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private-key", re.compile(r"-----BEGIN (?:[A-Z0-9]++ ){0,4}PRIVATE KEY")),
    ("aws-access-key", re.compile(r"A(?:KIA|SIA)(?<![A-Za-z0-9]A...)[A-Z0-9]{16}(?![A-Za-z0-9])")),
    ("github-token", re.compile(r"gh[pousr]_(?<![A-Za-z0-9_]....)[A-Za-z0-9]{36,}+")),
    ("github-token", re.compile(r"github_pat_(?<![A-Za-z0-9_]...........)[A-Za-z0-9_]{22,}+")),
    ("slack-token", re.compile(r"xox[abpr]-(?<![A-Za-z0-9-].....)[A-Za-z0-9-]{10,}+")),
    ("jwt", re.compile(r"eyJ(?<![A-Za-z0-9_-]...)[A-Za-z0-9_-]{8,}+\.ey[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+")),
    # The gateway's own API tokens: `sgw_` and 43 URL-safe base64 characters (gateway/auth/tokens.py).
    ("gateway-token", re.compile(r"sgw_(?<![A-Za-z0-9_-]....)[A-Za-z0-9_-]{40,}+")),
)

#: secret_access_key, secret_key, secret, session_token, api_key, api_secret, api_token, access_key,
#: access_token, auth_token, client_secret, refresh_token, private_key, password, passwd (also with
#: `-` or nothing for `_`), written as a trie so that a failed attempt costs a character or two.
_KEY_NAMES = (
    rb"s(?:ecret(?:[_-]?(?:access[_-]?)?key)?|ession[_-]?token)"
    rb"|a(?:pi[_-]?(?:key|secret|token)|ccess[_-]?(?:key|token)|uth[_-]?token)"
    rb"|client[_-]?secret|refresh[_-]?token|p(?:rivate[_-]?key|assw(?:or)?d)"
)
#: What a key or password is made of: letters, digits, base64 and the usual symbols; no space, quote,
#: bracket, comma, semicolon or colon, which end it.
_VALUE = rb"[a-z0-9_+/=.~!#$%&*?@^|-]"
#: `api_key = "..."`, `"client_secret": "..."`, `PASSWORD=...`, `Authorization: Bearer ...`, matched
#: in the text's ASCII-lowercased UTF-8: the value (group 1, read from the text itself) counts when it
#: is long and random-looking. A bare `token` is no key name: `next_page_token` is an ordinary result.
_ASSIGNMENTS = (
    re.compile(
        rb"(?:" + _KEY_NAMES + rb")[\"']?[ \t]{0,3}(?::=|=>|:|=)[ \t]{0,3}[\"']?(" + _VALUE + rb"{16,512}+)"
    ),
    re.compile(rb"bearer[ \t]{1,3}(" + _VALUE + rb"{16,512}+)"),
)

SECRET_KINDS = tuple(dict.fromkeys((*(kind for kind, _ in _TOKENS), "generic-api-key")))


def _high_entropy(value: str) -> bool:
    """At least 16 characters, letters mixed with digits or of both cases, and at least 3 bits of
    Shannon entropy per character: a key, not a word, a placeholder like `xxxx...` or a path."""
    counts = Counter(value)
    if len(value) < 16 or len(counts) < 8:  # entropy is at most log2(distinct characters)
        return False
    kinds = (str.islower, str.isupper, str.isdigit)
    if sum(any(kind(c) for c in counts) for kind in kinds) < 2:
        return False
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return entropy >= 3.0


def _assigned_secret(text: str) -> bool:
    raw = text.encode("utf-8", "surrogatepass")
    lowered = raw.lower()  # ASCII letters only: every offset stays where it was
    for assignment in _ASSIGNMENTS:
        for match in assignment.finditer(lowered):
            start = match.start()
            if start and lowered[start - 1 : start].isalnum():
                continue  # `mysecret=`, not a key name of its own
            if _high_entropy(raw[match.start(1) : match.end(1)].decode("ascii")):
                return True
    return False


def looks_like_secret(text: str) -> str | None:
    """The kind of secret `text` seems to hold (one of `SECRET_KINDS`: private-key,
    aws-access-key, github-token, slack-token, jwt, gateway-token, generic-api-key), or None."""
    text = text[:SCAN_LIMIT]
    for kind, pattern in _TOKENS:
        if pattern.search(text):
            return kind
    return "generic-api-key" if _assigned_secret(text) else None
