"""The hosts file: what a valid one gives, and that every mistake is refused with a ConfigError that
names the key at fault (a gateway must not start, or reload, on a file it half understands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.errors import ConfigError
from gateway.fleet.hosts import HostSpec, load_hosts, parse_hosts

TLS = {"ca": "/etc/sgw/ca.pem", "cert": "/etc/sgw/cert.pem", "key": "/etc/sgw/key.pem"}
OTHER_TLS = {"ca": "/etc/sgw/b/ca.pem", "cert": "/etc/sgw/b/cert.pem", "key": "/etc/sgw/b/key.pem"}


def a_host(name: str = "h1", **more: Any) -> dict[str, Any]:
    return {"name": name, "address": f"tcp://{name}.example:2376", "capacity": 10, **more}


def text(*hosts: dict[str, Any], **top: Any) -> str:
    top.setdefault("tls", TLS)
    return yaml.safe_dump({**top, "hosts": list(hosts) if hosts else [a_host()]})


def refused(source: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_hosts(source, "hosts.yaml")
    message = caught.value.message
    assert message.startswith("hosts.yaml: "), message
    assert caught.value.code == "config-error"
    return message


# -- a valid file -------------------------------------------------------------------------------


def test_a_valid_file_gives_every_setting() -> None:
    source = """
version: 1
tls: {ca: /etc/sgw/ca.pem, cert: /etc/sgw/cert.pem, key: /etc/sgw/key.pem}
health: {probe_interval_s: 0.5, probe_timeout_s: 1.5, down_after_s: 7}
hosts:
  - name: gpu-1
    address: tcp://10.0.0.5:2376
    capacity: 40
    labels: {gpu: a100, zone: eu-west.1}
  - name: cpu-1
    address: tcp://[fd00::7]:2376
    capacity: 100
    drain: true
    tls: {ca: /etc/sgw/b/ca.pem, cert: /etc/sgw/b/cert.pem, key: /etc/sgw/b/key.pem}
"""
    hosts = parse_hosts(source)
    gpu, cpu = hosts.hosts
    assert (gpu.name, gpu.address, gpu.capacity, gpu.drain) == ("gpu-1", "tcp://10.0.0.5:2376", 40, False)
    assert gpu.labels == {"gpu": "a100", "zone": "eu-west.1"}
    assert (cpu.name, cpu.capacity, cpu.drain, cpu.labels) == ("cpu-1", 100, True, {})
    assert (hosts.health.probe_interval_s, hosts.health.probe_timeout_s) == (0.5, 1.5)
    assert hosts.health.down_after_s == 7
    assert not hosts.insecure_private_network
    assert hosts.named("cpu-1") is cpu and hosts.named("nope") is None


def test_defaults() -> None:
    hosts = parse_hosts(text(a_host()))
    assert hosts.version == 1
    assert (hosts.health.probe_interval_s, hosts.health.probe_timeout_s, hosts.health.down_after_s) == (
        1.0,
        2.0,
        5.0,
    )
    only = hosts.hosts[0]
    assert (only.drain, only.labels, only.tls) == (False, {}, None)


def test_a_host_uses_the_files_tls_unless_it_has_its_own() -> None:
    hosts = parse_hosts(text(a_host("a"), a_host("b", tls=OTHER_TLS)))
    a, b = hosts.hosts
    default, own = hosts.tls_of(a), hosts.tls_of(b)
    assert default is not None and own is not None
    assert (str(default.ca), str(default.cert), str(default.key)) == tuple(TLS.values())
    assert (str(own.ca), str(own.cert), str(own.key)) == tuple(OTHER_TLS.values())


def test_per_host_tls_alone_is_enough() -> None:
    hosts = parse_hosts(yaml.safe_dump({"hosts": [a_host("a", tls=TLS)]}))
    assert hosts.tls_of(hosts.hosts[0]) is not None


def test_plain_tcp_needs_the_private_network_flag() -> None:
    source = yaml.safe_dump({"hosts": [a_host("a"), a_host("b", tls=TLS)]})
    message = refused(source)
    assert "host a has no TLS settings" in message and "insecure_private_network" in message
    hosts = parse_hosts(yaml.safe_dump({"insecure_private_network": True, "hosts": [a_host("a")]}))
    assert hosts.tls_of(hosts.hosts[0]) is None


@pytest.mark.parametrize("name", ["a", "0", "gpu-1", "a" * 63, "x-y-z-9"])
def test_good_names(name: str) -> None:
    assert parse_hosts(text(a_host(name))).hosts[0].name == name


@pytest.mark.parametrize(
    "address", ["tcp://10.0.0.1:2376", "tcp://host.example:1", "tcp://[::1]:65535", "tcp://h:2376"]
)
def test_good_addresses(address: str) -> None:
    assert parse_hosts(text({**a_host(), "address": address})).hosts[0].address == address


# -- refusals, each naming its key ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Gpu", "-a", "a_b", "a.b", "a b", "a" * 64, "é", "a/b"])
def test_a_bad_name_is_refused(name: str) -> None:
    message = refused(text(a_host(name)))
    assert "hosts.0.name" in message


def test_two_hosts_with_one_name_are_refused() -> None:
    first, second = a_host("a"), {**a_host("a"), "address": "tcp://other.example:2376"}
    message = refused(text(first, second))
    assert "same name: a" in message


@pytest.mark.parametrize(
    "other",
    [
        "tcp://a.example:2376",
        # The same engine written another way is the same engine: it would be counted twice.
        "tcp://A.EXAMPLE:2376",
        "tcp://a.example:02376",
    ],
)
def test_two_hosts_with_one_address_are_refused(other: str) -> None:
    message = refused(text(a_host("a"), {**a_host("b"), "address": other}))
    assert "same address" in message and "a.example:2376" in message


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("http://h:2376", "expected tcp://HOST:PORT"),
        ("https://h:2376", "expected tcp://HOST:PORT"),
        ("unix:///var/run/docker.sock", "expected tcp://HOST:PORT"),
        ("h:2376", "expected tcp://HOST:PORT"),
        ("tcp://:2376", "expected tcp://HOST:PORT"),
        ("tcp://h", "the port is missing"),
        ("tcp://h:", "the port is missing"),
        ("tcp://h:0", "not a number from 1 to 65535"),
        ("tcp://h:65536", "not a number from 1 to 65535"),
        ("tcp://h:99999", "not a number from 1 to 65535"),
        ("tcp://h:-1", "not a number from 1 to 65535"),
        ("tcp://h:abc", "not a number from 1 to 65535"),
        ("tcp://h:2376/", "expected tcp://HOST:PORT"),
        ("tcp://h:2376/v1.45", "expected tcp://HOST:PORT"),
        ("tcp://h:2376?tls=0", "expected tcp://HOST:PORT"),
        ("tcp://h:2376#x", "expected tcp://HOST:PORT"),
        # Credentials do not belong in an address: it is shown in /ready and the audit log.
        ("tcp://user:secret@h:2376", "expected tcp://HOST:PORT"),
    ],
)
def test_a_bad_address_is_refused(address: str, why: str) -> None:
    message = refused(text({**a_host(), "address": address}))
    assert "hosts.0.address" in message and why in message, message


@pytest.mark.parametrize("capacity", [0, -1, 100_001, 10**12, "many", 1.5, None])
def test_a_bad_capacity_is_refused(capacity: object) -> None:
    message = refused(text({**a_host(), "capacity": capacity}))
    assert "hosts.0.capacity" in message


def test_capacity_is_required() -> None:
    entry = a_host()
    del entry["capacity"]
    assert "hosts.0.capacity" in refused(text(entry))


@pytest.mark.parametrize("capacity", [1, 100_000])
def test_capacity_bounds_are_inclusive(capacity: int) -> None:
    assert parse_hosts(text({**a_host(), "capacity": capacity})).hosts[0].capacity == capacity


@pytest.mark.parametrize(
    ("labels", "key"),
    [
        ({"gpu!": "a100"}, "label gpu!=a100"),
        ({"gpu": ""}, "label gpu="),
        ({"": "x"}, "label =x"),
        ({"-gpu": "x"}, "label -gpu=x"),
        ({"gpu": "a 100"}, "label gpu=a 100"),
        ({"g" * 64: "x"}, "label " + "g" * 64),
        ({"gpu": "v" * 64}, "label gpu="),
        ({"zone": "eu/west"}, "label zone=eu/west"),
    ],
)
def test_a_bad_label_is_refused(labels: dict[str, str], key: str) -> None:
    message = refused(text(a_host(labels=labels)))
    assert "hosts.0.labels" in message and key in message, message


def test_a_label_value_that_is_not_text_is_refused() -> None:
    message = refused(text(a_host(labels={"gpu": True})))
    assert "hosts.0.labels.gpu" in message


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda f: f.update(hsots=[]), "hsots"),
        (lambda f: f.update(insecure_private_netwrok=True), "insecure_private_netwrok"),
        (lambda f: f["hosts"][0].update(capactiy=3), "hosts.0.capactiy"),
        (lambda f: f["hosts"][0].update(label={"a": "b"}), "hosts.0.label"),
        (lambda f: f["hosts"][0].update(drained=True), "hosts.0.drained"),
        (lambda f: f["tls"].update(crt="/x"), "tls.crt"),
        (lambda f: f["hosts"][0].update(tls={**TLS, "keyfile": "/x"}), "hosts.0.tls.keyfile"),
        (lambda f: f.update(health={"down_after": 3}), "health.down_after"),
    ],
)
def test_an_unknown_key_is_refused_wherever_it_is(mutate: Any, where: str) -> None:
    raw: dict[str, Any] = {"tls": dict(TLS), "hosts": [a_host()]}
    mutate(raw)
    message = refused(yaml.safe_dump(raw))
    assert where in message and "Extra inputs are not permitted" in message, message


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("insecure_private_network: true\nhosts: []\nhosts: []\n", "'hosts'"),
        (
            "insecure_private_network: true\nhosts:\n"
            "  - {name: a, address: 'tcp://a:1', capacity: 1, capacity: 50}\n",
            "'capacity'",
        ),
        (
            "insecure_private_network: true\nhosts:\n"
            "  - {name: a, address: 'tcp://a:1', capacity: 1, labels: {gpu: x, gpu: y}}\n",
            "'gpu'",
        ),
    ],
)
def test_a_duplicate_yaml_key_is_refused(source: str, key: str) -> None:
    message = refused(source)
    assert "duplicate key" in message and key in message


@pytest.mark.parametrize("source", ["", "- a\n- b\n", "just text", "42", "null"])
def test_a_file_that_is_not_a_mapping_is_refused(source: str) -> None:
    assert "expected a mapping with a `hosts:` list" in refused(source)


def test_yaml_that_does_not_parse_is_refused() -> None:
    assert "not valid YAML" in refused("hosts: [\n")


def test_an_empty_or_missing_hosts_list_is_refused() -> None:
    assert "hosts" in refused(yaml.safe_dump({"tls": TLS, "hosts": []}))
    assert "hosts: Field required" in refused(yaml.safe_dump({"tls": TLS}))


def test_only_version_1_is_known() -> None:
    assert "version" in refused(text(version=2))


@pytest.mark.parametrize(
    ("health", "key"),
    [
        ({"probe_interval_s": 0}, "health.probe_interval_s"),
        ({"probe_interval_s": 61}, "health.probe_interval_s"),
        ({"probe_timeout_s": -1}, "health.probe_timeout_s"),
        ({"down_after_s": 0}, "health.down_after_s"),
        ({"down_after_s": 601}, "health.down_after_s"),
    ],
)
def test_health_settings_are_bounded(health: dict[str, float], key: str) -> None:
    assert key in refused(text(health=health))


@pytest.mark.parametrize("missing", ["ca", "cert", "key"])
def test_a_tls_section_needs_all_three_files(missing: str) -> None:
    tls = {k: v for k, v in TLS.items() if k != missing}
    assert f"tls.{missing}" in refused(text(tls=tls))


def test_the_source_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/sgw/hosts\.yaml: hosts\.0\.capacity"):
        parse_hosts(text({**a_host(), "capacity": 0}), "/etc/sgw/hosts.yaml")


# -- load_hosts ----------------------------------------------------------------------------------


def tls_files(directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in ("ca", "cert", "key"):
        path = directory / f"{part}.pem"
        path.write_text("-----BEGIN-----\n")
        paths[part] = str(path)
    return paths


def test_load_hosts_reads_a_file_whose_tls_files_exist(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text(text(a_host("a"), a_host("b", tls=tls_files(tmp_path / "b")), tls=tls_files(tmp_path)))
    hosts = load_hosts(path)
    assert [h.name for h in hosts.hosts] == ["a", "b"]


@pytest.mark.parametrize("missing", ["ca", "cert", "key"])
def test_load_hosts_refuses_a_missing_tls_file(tmp_path: Path, missing: str) -> None:
    tls = tls_files(tmp_path)
    Path(tls[missing]).unlink()
    path = tmp_path / "hosts.yaml"
    path.write_text(text(a_host("a"), tls=tls))
    with pytest.raises(ConfigError) as caught:
        load_hosts(path)
    assert f"host a: TLS file {tls[missing]} does not exist" in caught.value.message
    assert str(path) in caught.value.message


def test_load_hosts_checks_a_hosts_own_tls_files(tmp_path: Path) -> None:
    own = tls_files(tmp_path / "b")
    Path(own["key"]).unlink()
    path = tmp_path / "hosts.yaml"
    path.write_text(text(a_host("a"), a_host("b", tls=own), tls=tls_files(tmp_path)))
    with pytest.raises(ConfigError, match=r"host b: TLS file .*/b/key\.pem does not exist"):
        load_hosts(path)


def test_load_hosts_without_tls_on_a_private_network_needs_no_files(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump({"insecure_private_network": True, "hosts": [a_host()]}))
    assert load_hosts(path).hosts[0].name == "h1"


def test_load_hosts_refuses_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the hosts file .*nope\.yaml"):
        load_hosts(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read the hosts file"):
        load_hosts(tmp_path)  # a directory


def test_load_hosts_names_the_file_in_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}: hosts"):
        load_hosts(path)


# -- satisfies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("needs", "ok"),
    [
        ({}, True),
        ({"gpu": "a100"}, True),
        ({"gpu": "a100", "zone": "eu"}, True),
        ({"gpu": "h100"}, False),
        ({"gpu": "A100"}, False),
        ({"ssd": "yes"}, False),
        ({"gpu": "a100", "ssd": "yes"}, False),
    ],
)
def test_satisfies_needs_every_label_with_its_value(needs: dict[str, str], ok: bool) -> None:
    spec = HostSpec(name="h", address="tcp://h:1", capacity=1, labels={"gpu": "a100", "zone": "eu"})
    assert spec.satisfies(needs) is ok


def test_a_host_without_labels_satisfies_only_no_needs() -> None:
    spec = HostSpec(name="h", address="tcp://h:1", capacity=1)
    assert spec.satisfies({})
    assert not spec.satisfies({"gpu": "a100"})
