"""Setup takes debootstrap's mirror from apt's own sources, so it works behind a local mirror."""

from __future__ import annotations

from pathlib import Path

from gateway.setup.debian import (
    ENV_DEBIAN_MIRROR,
    AptSource,
    DebianSource,
    choose_debian_source,
    debootstrap_argv,
    read_apt_sources,
)

#: Debian 12's stock deb822 file: the release and its security suite.
STOCK = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _stanza(uri: str, suite: str, components: str, extra: str = "", types: str = "deb") -> str:
    return f"{extra}Types: {types}\nURIs: {uri}\nSuites: {suite}\nComponents: {components}\n"


def _etc_apt(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_stock_debian_sources_give_debians_mirror_and_keyring(tmp_path: Path) -> None:
    etc = _etc_apt(tmp_path, {"sources.list.d/debian.sources": STOCK})
    source = choose_debian_source(read_apt_sources(etc), "bookworm")
    assert source == DebianSource(
        "http://deb.debian.org/debian",
        "bookworm",
        Path("/usr/share/keyrings/debian-archive-keyring.gpg"),
        str(etc / "sources.list.d/debian.sources"),
    )


def test_a_local_mirror_in_sources_list_is_used_with_its_own_keyring(tmp_path: Path) -> None:
    etc = _etc_apt(
        tmp_path,
        {
            "sources.list": (
                "# the security suite comes first here, and is not what debootstrap wants\n"
                "deb http://mirror.lan/debian-security bookworm-security main\n"
                "deb-src http://mirror.lan/pub/debian bookworm main\n"
                "deb [arch=amd64 signed-by=/etc/apt/keyrings/lan.gpg] http://mirror.lan/pub/debian/ bookworm "
                "main contrib\n"
            ),
            "sources.list.d/debian.sources": STOCK,
        },
    )
    source = choose_debian_source(read_apt_sources(etc), "bookworm")
    assert (source.mirror, source.suite, source.keyring) == (
        "http://mirror.lan/pub/debian",
        "bookworm",
        Path("/etc/apt/keyrings/lan.gpg"),
    )
    assert source.origin == str(etc / "sources.list")


def test_a_caching_proxy_uri_need_not_end_in_debian(tmp_path: Path) -> None:
    etc = _etc_apt(
        tmp_path,
        {
            "sources.list.d/00-cache.sources": (
                "Types: deb\nURIs: http://apt-cache.lan:3142/deb.debian.org/debian-current\n"
                "Suites: bookworm\nComponents: main non-free-firmware\n"
            )
        },
    )
    source = choose_debian_source(read_apt_sources(etc), "bookworm")
    assert source.mirror == "http://apt-cache.lan:3142/deb.debian.org/debian-current"
    assert source.keyring is None  # debootstrap's default: Debian's archive keyring


def test_what_debootstrap_cannot_use_is_skipped(tmp_path: Path) -> None:
    etc = _etc_apt(
        tmp_path,
        {
            "sources.list": "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n",
            "sources.list.d/a.sources": "\n\n".join(
                _stanza(*fields)
                for fields in (
                    ("http://disabled.lan/debian", "bookworm", "main", "Enabled: no\n"),
                    ("mirror+file:/etc/apt/mirrors/debian.list", "bookworm", "main"),
                    ("http://src.lan/debian", "bookworm", "main", "", "deb-src"),
                    ("http://contrib-only.lan/debian", "bookworm", "contrib"),
                    ("http://updates-only.lan/debian", "bookworm-updates", "main"),
                )
            ),
            "sources.list.d/b.list.disabled": "deb http://ignored-by-apt.lan/debian bookworm main\n",
            "sources.list.d/c.list": "deb file:/srv/mirror/debian bookworm main\n",
        },
    )
    source = choose_debian_source(read_apt_sources(etc), "bookworm")
    assert (source.mirror, source.origin) == ("file:/srv/mirror/debian", str(etc / "sources.list.d/c.list"))


def test_without_a_usable_source_setup_says_it_falls_back(tmp_path: Path) -> None:
    none_here = choose_debian_source(read_apt_sources(tmp_path / "missing"), "bookworm")
    assert (none_here.mirror, none_here.suite) == ("http://deb.debian.org/debian", "bookworm")
    assert "no apt source for this Debian release" in none_here.origin
    ubuntu = [AptSource("http://archive.ubuntu.com/ubuntu", "jammy", ("main",), None, "sources.list")]
    elsewhere = choose_debian_source(ubuntu, None)
    assert (elsewhere.mirror, elsewhere.suite) == ("http://deb.debian.org/debian", "bookworm")
    assert "not Debian" in elsewhere.origin


def test_the_environment_overrides_apt(tmp_path: Path) -> None:
    etc = _etc_apt(tmp_path, {"sources.list.d/debian.sources": STOCK})
    chosen = choose_debian_source(read_apt_sources(etc), "bookworm", "http://other.lan/debian/ trixie")
    assert chosen == DebianSource("http://other.lan/debian", "trixie", None, ENV_DEBIAN_MIRROR)
    assert choose_debian_source([], "bookworm", "http://other.lan/debian").suite == "bookworm"


def test_debootstrap_gets_the_keyring_only_when_it_exists(tmp_path: Path) -> None:
    keyring = tmp_path / "lan.gpg"
    source = DebianSource("http://mirror.lan/debian", "bookworm", keyring, "sources.list")
    without = debootstrap_argv(source, ("python3", "bash"), tmp_path / "root")
    assert without == [
        "debootstrap",
        "--variant=minbase",
        "--include=python3,bash",
        "bookworm",
        str(tmp_path / "root"),
        "http://mirror.lan/debian",
    ]
    keyring.write_bytes(b"")
    assert f"--keyring={keyring}" in debootstrap_argv(source, ("python3",), tmp_path / "root")
