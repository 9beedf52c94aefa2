"""Where the offline images' Debian packages come from, and debootstrap itself.

debootstrap takes its mirror from this machine's apt sources (the first `deb` entry of the host's own
release with `main`, over a method it speaks), so a local mirror or cache works as is;
SGW_DEBIAN_MIRROR overrides it, and Debian's own mirror is the last resort.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.setup.state import run, say

__all__ = [
    "ENV_DEBIAN_MIRROR",
    "AptSource",
    "DebianSource",
    "choose_debian_source",
    "debian_source",
    "debootstrap",
    "debootstrap_argv",
    "parse_deb822_sources",
    "parse_one_line_sources",
    "read_apt_sources",
]

#: `URL [SUITE]` of a Debian mirror for debootstrap, instead of the one apt's sources name.
ENV_DEBIAN_MIRROR = "SGW_DEBIAN_MIRROR"
_FALLBACK_MIRROR, _FALLBACK_SUITE = "http://deb.debian.org/debian", "bookworm"
#: The URI methods debootstrap can fetch from (not apt's mirror+, tor+ or cdrom: methods).
_SCHEMES = ("http://", "https://", "file:")
_ONE_LINE = re.compile(
    r"^\s*deb\s+(?:\[(?P<options>[^\]]*)\]\s*)?(?P<uri>\S+)\s+(?P<suite>\S+)(?P<components>(?:\s+\S+)*)\s*$"
)


@dataclass(frozen=True, slots=True)
class AptSource:
    """One `deb` line of apt's configuration: a URI and one suite of it."""

    uri: str
    suite: str
    components: tuple[str, ...]
    keyring: str | None  # Signed-By, when it names a keyring file
    origin: str  # the file it came from


@dataclass(frozen=True, slots=True)
class DebianSource:
    """Where debootstrap fetches the image's packages from, and why that place."""

    mirror: str
    suite: str
    keyring: Path | None
    origin: str


def _keyring(value: str) -> str | None:
    """A Signed-By value that names one keyring file (not fingerprints, not an inline key)."""
    words = value.split()
    return words[0] if len(words) == 1 and words[0].startswith("/") else None


def parse_one_line_sources(text: str, origin: str) -> list[AptSource]:
    """`deb [options] URI SUITE COMPONENT...` lines (sources.list, *.list)."""
    found = []
    for line in text.splitlines():
        match = _ONE_LINE.match(line.partition("#")[0])
        if match is None:
            continue
        options = dict(opt.partition("=")[::2] for opt in (match["options"] or "").split())
        found.append(
            AptSource(
                uri=match["uri"].rstrip("/"),
                suite=match["suite"],
                components=tuple(match["components"].split()),
                keyring=_keyring(options.get("signed-by", "")),
                origin=origin,
            )
        )
    return found


def parse_deb822_sources(text: str, origin: str) -> list[AptSource]:
    """Stanzas of `Types:`, `URIs:`, `Suites:`, `Components:` (*.sources), skipping `Enabled: no`."""
    found = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t"):
                if key:
                    fields[key] += "\n" + line.strip()
                continue
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        components = tuple(fields.get("components", "").split())
        keyring = _keyring(fields.get("signed-by", ""))
        found += [
            AptSource(uri.rstrip("/"), suite, components, keyring, origin)
            for uri in fields.get("uris", "").split()
            for suite in fields.get("suites", "").split()
        ]
    return found


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every `deb` source apt reads, in apt's order: sources.list, then sources.list.d/ by name
    (only `*.list` and `*.sources`; apt ignores other names, and so do we)."""
    files = [etc_apt / "sources.list"]
    with contextlib.suppress(OSError):
        files += sorted(
            path for path in (etc_apt / "sources.list.d").iterdir() if path.suffix in (".list", ".sources")
        )
    found: list[AptSource] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        parse = parse_deb822_sources if path.suffix == ".sources" else parse_one_line_sources
        found += parse(text, str(path))
    return found


def choose_debian_source(
    sources: list[AptSource], codename: str | None, override: str | None = None
) -> DebianSource:
    """The mirror and suite debootstrap should use.

    `override` (`URL [SUITE]`, from SGW_DEBIAN_MIRROR) wins. Otherwise, on a Debian host (`codename`
    set), the first source apt uses for the host's own release (`main` of suite `codename`, by a
    method debootstrap speaks: http, https or file): a local mirror or cache configured for apt is
    used as is. Only when there is none, Debian's own mirror.
    """
    if override and override.split():
        mirror, *rest = override.split()
        suite = rest[0] if rest else codename or _FALLBACK_SUITE
        return DebianSource(mirror.rstrip("/"), suite, None, ENV_DEBIAN_MIRROR)
    if codename:
        for source in sources:
            if source.suite == codename and "main" in source.components and source.uri.startswith(_SCHEMES):
                keyring = Path(source.keyring) if source.keyring and source.keyring.endswith(".gpg") else None
                return DebianSource(source.uri, codename, keyring, source.origin)
    why = "no apt source for this Debian release" if codename else "this host is not Debian"
    return DebianSource(_FALLBACK_MIRROR, codename or _FALLBACK_SUITE, None, f"default ({why})")


def _host_codename() -> str | None:
    """The Debian release this host runs (`VERSION_CODENAME`), or None on another distribution."""
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        return None
    codename = re.search(r"^VERSION_CODENAME=\"?(\w+)", release, re.MULTILINE)
    is_debian = re.search(r"^ID=\"?debian\"?$", release, re.MULTILINE)
    return codename.group(1) if codename and is_debian else None


def debian_source() -> DebianSource:
    """Where this machine's setup takes Debian packages from (see choose_debian_source)."""
    return choose_debian_source(read_apt_sources(), _host_codename(), os.environ.get(ENV_DEBIAN_MIRROR))


def debootstrap_argv(source: DebianSource, packages: tuple[str, ...], target: Path) -> list[str]:
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}"]
    if source.keyring is not None and source.keyring.is_file():
        argv.append(f"--keyring={source.keyring}")
    return [*argv, source.suite, str(target), source.mirror]


def debootstrap(source: DebianSource, packages: tuple[str, ...], target: Path) -> None:
    """A minbase tree of `source`'s suite with `packages` in `target` (a minute or two)."""
    say(
        f"debootstrap {source.suite} from {source.mirror} (from {source.origin}) "
        f"with {', '.join(packages)} (a minute or two)"
    )
    run(debootstrap_argv(source, packages, target), timeout=1200)
