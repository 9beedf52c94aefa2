"""The DNS server of the egress tests' outside world (see `egress_world`), and a client for it.

UDP on `DNS_IP`:53 in the world's namespace, a thread of `egress_world_server`. It knows two names:
`rebind.test`, whose A queries are answered alternately 198.51.100.10 and 10.1.2.3 (first .10;
`reset_dns` starts over), and `dns-good.test`, always 198.51.100.10; TTL 0 both. Any other type for
them is NOERROR with no answers; any other name is NXDOMAIN. Only the question is parsed (EDNS and
the rest are ignored, no OPT goes back), and a packet that is not one query is dropped. Every query
answered is a JSON line (`name`, `qtype`, `answer`, `rcode`, `client`) in the log, written before
the answer goes out. Stdlib only: it runs in the namespace with nothing but the interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DNS_GOOD_NAME", "DNS_IP", "REBIND_ADDRESSES", "REBIND_NAME", "DnsAnswer", "DnsServer", "exchange",
    "query", "reset_dns",
]  # fmt: skip

DNS_IP = "198.51.100.53"
REBIND_NAME, DNS_GOOD_NAME = "rebind.test", "dns-good.test"
#: The world's PUBLIC_IP then PRIVATE_IP (`egress_world`).
REBIND_ADDRESSES = ("198.51.100.10", "10.1.2.3")
A, AAAA, IN = 1, 28, 1
NOERROR, NXDOMAIN = 0, 3
_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV"}
_TYPES |= {41: "OPT", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
_QR, _AA, _RD = 0x8000, 0x0400, 0x0100


def _type_name(qtype: int) -> str:
    return _TYPES.get(qtype, f"TYPE{qtype}")


def _read_name(packet: bytes, offset: int, *, pointers: bool) -> tuple[str, int]:
    """The name at `offset` (lower case) and the offset after it; ValueError if malformed."""
    labels: list[str] = []
    end = None
    for _ in range(128):
        length = packet[offset]
        if length & 0xC0 == 0xC0 and pointers:
            end = end if end is not None else offset + 2
            offset = struct.unpack_from("!H", packet, offset)[0] & 0x3FFF
            continue
        if length > 63 or offset + 1 + length > len(packet):
            raise ValueError("a bad label")
        offset += 1
        if length == 0:
            return ".".join(labels).lower(), end if end is not None else offset
        labels.append(packet[offset : offset + length].decode("ascii"))
        offset += length
    raise ValueError("too many labels")


class DnsServer:
    """The server; binds on construction, answers in `serve_forever`. `reset` names the file whose
    change (`reset_dns`) starts rebind.test's alternation over."""

    def __init__(self, address: str, port: int, log: Path, reset: Path) -> None:
        self.log, self.reset = log, reset
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self._generation: str | None = None
        self._count = 0

    def serve_forever(self) -> None:
        while True:
            packet, client = self.sock.recvfrom(65535)
            reply = self.answer(packet, client[0])
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, client)

    def _rebind_address(self) -> str:
        generation = self.reset.read_text() if self.reset.exists() else ""
        if generation != self._generation:
            self._generation, self._count = generation, 0
        self._count += 1
        return REBIND_ADDRESSES[(self._count - 1) % 2]

    def answer(self, packet: bytes, client: str) -> bytes | None:
        """The reply to one query, logged; None (nothing logged) for anything else."""
        try:
            ident, flags, qdcount = struct.unpack_from("!HHH", packet)
            if flags & _QR or (flags >> 11) & 0xF or qdcount != 1:
                return None
            name, offset = _read_name(packet, 12, pointers=False)
            qtype, qclass = struct.unpack_from("!HH", packet, offset)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            return None
        question = packet[12 : offset + 4]
        rcode, address = NOERROR, None
        if name not in (REBIND_NAME, DNS_GOOD_NAME):
            rcode = NXDOMAIN
        elif qtype == A and qclass == IN:
            address = self._rebind_address() if name == REBIND_NAME else REBIND_ADDRESSES[0]
        line = {"name": name, "qtype": _type_name(qtype), "answer": address, "client": client}
        line["rcode"] = "NXDOMAIN" if rcode == NXDOMAIN else "NOERROR"
        with self.log.open("a") as out:
            out.write(json.dumps(line) + "\n")
        header = struct.pack("!HHHHHH", ident, _QR | _AA | (flags & _RD) | rcode, 1, int(bool(address)), 0, 0)
        if address is None:
            return header + question
        record = struct.pack("!HHHIH", 0xC00C, A, IN, 0, 4) + socket.inet_aton(address)
        return header + question + record


def reset_dns(reset: Path) -> None:
    """Change the server's reset file (atomically): its next rebind.test A answer is the first."""
    temporary = reset.with_name(reset.name + ".new")
    temporary.write_text(os.urandom(8).hex())
    temporary.replace(reset)


@dataclass
class DnsAnswer:
    """A reply as `query` parsed it: `answers` holds (type, ttl, rdata; an address for A/AAAA)."""

    ident: int
    flags: int
    rcode: int
    question: bytes
    answers: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        return [data for rtype, _ttl, data in self.answers if rtype in (A, AAAA)]


def exchange(packet: bytes, server: str = DNS_IP, port: int = 53, timeout_s: float = 5.0) -> bytes | None:
    """Send one UDP packet; the reply, or None if none came within `timeout_s`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(packet, (server, port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def query(
    name: str, qtype: int = A, *, ident: int = 0x5A5A, rd: bool = True, edns: bool = False,
    server: str = DNS_IP, timeout_s: float = 5.0,
) -> DnsAnswer:  # fmt: skip
    """Ask `server` one question (with an EDNS OPT record if `edns`); the parsed reply, which must
    echo the ID and the question (AssertionError if not; TimeoutError if none comes)."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    question = qname + struct.pack("!HH", qtype, IN)
    header = struct.pack("!HHHHHH", ident, _RD if rd else 0, 1, 0, 0, int(edns))
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0) if edns else b""
    reply = exchange(header + question + opt, server, timeout_s=timeout_s)
    if reply is None:
        raise TimeoutError(f"no answer from {server} to {name} {_type_name(qtype)}")
    got_ident, flags, qdcount, ancount = struct.unpack_from("!HHHH", reply)
    assert (got_ident, qdcount, reply[12 : 12 + len(question)]) == (ident, 1, question), reply
    answer = DnsAnswer(got_ident, flags, flags & 0xF, question)
    offset = 12 + len(question)
    for _ in range(ancount):
        _owner, offset = _read_name(reply, offset, pointers=True)
        rtype, _class, ttl, size = struct.unpack_from("!HHIH", reply, offset)
        rdata = reply[offset + 10 : offset + 10 + size]
        offset += 10 + size
        family = {A: socket.AF_INET, AAAA: socket.AF_INET6}.get(rtype)
        answer.answers.append((rtype, ttl, socket.inet_ntop(family, rdata) if family else rdata.hex()))
    return answer
