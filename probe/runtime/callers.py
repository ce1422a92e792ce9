"""Who may call connstats' HTTP listeners (the probe's HTTP API and the web page).

A caller is admitted when it is root (or the user the listener runs as, who can read the
token anyway), or in the group the operator names (``--http-group``), or when it presents the token (``<state>/ui-token``, mode 0600). Who the caller is comes
from the kernel, never from the request: for a TCP peer whose socket lives in this network
namespace (a local user, over loopback or any address of this host) the owner of that
socket, asked once per connection through sock_diag (``NETLINK_SOCK_DIAG``, an exact
lookup by the 4-tuple). A peer whose socket is not here (another host) has no uid: only
the token admits it.

    callers = Callers(TokenFile(state_dir / TOKEN_FILE), group="connstats", what="this API")
    refusal = callers.refusal(request, offered_token)   # None: admitted
"""
from __future__ import annotations

import asyncio
import errno
import grp
import hmac
import ipaddress
import logging
import os
import pwd
import secrets
import socket
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from aiohttp import web

from ..contract.errors import ConfigError
from .private import PRIVATE_FILE_MODE

log = logging.getLogger("connstats.access")

TOKEN_FILE = "ui-token"
TOKEN_BYTES = 24
MAX_LOGGED_REFUSALS = 4096  # distinct uids (and remote addresses) logged once each

# -- the token ------------------------------------------------------------------------------


class TokenFile:
    """The token in ``<state>/ui-token`` (0600), shared by every listener on the state
    directory. ``current()`` re-reads the file when it changed (another process of the same
    state directory may have made a new one), so the file is the one truth."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._token: str | None = None

    def renew(self) -> str:
        """A fresh token, written atomically (the web page makes one at each start)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        temporary = self._write_temporary(token)
        os.replace(temporary, self.path)
        return token

    def ensure(self) -> str:
        """The token, made first if there is none (the HTTP API keeps an existing one)."""
        found = self.current()
        if found:
            return found
        temporary = self._write_temporary(secrets.token_urlsafe(TOKEN_BYTES))
        try:
            os.link(temporary, self.path)  # never replaces one made meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
        return self.current() or ""

    def current(self) -> str | None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        if (info.st_ino, info.st_mtime_ns) != self._seen:
            self._token = self.path.read_text().strip() or None
            self._seen = (info.st_ino, info.st_mtime_ns)
        return self._token

    def matches(self, offered: str | None) -> bool:
        """True if ``offered`` is the token, compared in constant time."""
        token = self.current()
        if not offered or not token:
            return False
        return hmac.compare_digest(offered.encode(), token.encode())

    def _write_temporary(self, token: str) -> Path:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        return temporary


# -- the peer's uid, from the kernel ----------------------------------------------------------

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16s")  # sport, dport, src, dst (network order), then if, cookie
_SOCKID_TAIL = struct.Struct("=III")
_UID_OFFSET = 4 + _SOCKID.size + _SOCKID_TAIL.size + 12  # inet_diag_msg: ..., expires, rqueue, wqueue, uid


def _family_and_bytes(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a v4 client of a dual-stack listener has an AF_INET socket
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, ip.packed.ljust(16, b"\0")


def socket_owner(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket of this network namespace whose own address is
    ``local`` and whose peer is ``remote``; None if there is no such socket here."""
    family, src = _family_and_bytes(local[0])
    _, dst = _family_and_bytes(remote[0])
    body = (_DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
            + _SOCKID.pack(local[1], remote[1], src, dst)
            + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    request = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(request, (0, 0))
        answer = nl.recv(65536)
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(answer)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", answer, _NLMSGHDR.size)
        if -code in (errno.ENOENT, 0):
            return None
        raise OSError(-code, os.strerror(-code))
    uid: int
    (uid,) = struct.unpack_from("=I", answer, _NLMSGHDR.size + _UID_OFFSET)
    return uid


def peer_uid(transport: asyncio.BaseTransport | None) -> int | None:
    """The uid of the process that owns the other end of ``transport``'s TCP connection,
    if that end is on this host (in this network namespace); None otherwise."""
    if transport is None:
        return None
    peer, own = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not peer or not own or not isinstance(peer, tuple):
        return None
    try:
        return socket_owner((peer[0], peer[1]), (own[0], own[1]))
    except (OSError, ValueError) as exc:
        log.warning("cannot find the owner of the connection from %s:%s: %s; it needs the token", peer[0], peer[1], exc)
        return None


# -- who is admitted ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    status: int  # 401: no (valid) token and no uid known; 403: a local user who may not
    message: str


class Callers:
    """The admission rule of one listener: root, members of ``group``, or the token."""

    def __init__(self, token: TokenFile | None, group: str | None = None, what: str = "this API",
                 browser: bool = False) -> None:
        self.token = token
        self.browser = browser  # the web page: the token also comes as ?token= and a cookie
        self.group = group
        self.gid = group_id(group) if group else None
        self.what = what
        self._uids: weakref.WeakKeyDictionary[asyncio.BaseTransport, int | None] = weakref.WeakKeyDictionary()
        self._logged: set[int | str] = set()  # uids, and remote addresses of callers without one

    def uid_of(self, request: web.BaseRequest) -> int | None:
        """The caller's uid, found once per connection."""
        transport = request.transport
        if transport is None:  # the connection is gone
            return None
        try:
            return self._uids[transport]
        except KeyError:
            pass
        except TypeError:  # not weakly referable: ask every time
            return peer_uid(transport)
        uid = self._uids[transport] = peer_uid(transport)
        return uid

    def refusal(self, request: web.BaseRequest, offered: str | None) -> Refusal | None:
        """None if the caller is admitted, else why not and how to get in."""
        uid = self.uid_of(request)
        if uid in (0, os.geteuid()) or (uid is not None and self._in_group(uid)):  # the owner may read the token
            return None
        if self.token is not None and self.token.matches(offered):
            return None
        refusal = self._explain(uid, offered)
        self._log_once(uid, request, refusal)
        return refusal

    def _in_group(self, uid: int) -> bool:
        if self.gid is None:
            return False
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            return False
        return self.gid in os.getgrouplist(user.pw_name, user.pw_gid)

    def token_hint(self) -> str:
        where = f"the token in {self.token.path}" if self.token is not None else "the token"
        page = "open the address printed at start (?token=...) or " if self.browser else ""
        return f"{page}send 'Authorization: Bearer <{where}>'"

    def _explain(self, uid: int | None, offered: str | None) -> Refusal:
        if offered:
            return Refusal(401, f"the token is not {self.what}'s; {self.token_hint()}")
        if uid is None:
            return Refusal(401, f"{self.what} needs its token; {self.token_hint()}")
        group = f"join group {self.group}" if self.group else "be in the group named with --http-group"
        return Refusal(403, f"user {user_name(uid)} (uid {uid}) may not use {self.what}; run as root, "
                            f"{group}, or {self.token_hint()}")

    def _log_once(self, uid: int | None, request: web.BaseRequest, refusal: Refusal) -> None:
        who = uid if uid is not None else (request.remote or "?")
        if who in self._logged or len(self._logged) >= MAX_LOGGED_REFUSALS:
            return
        self._logged.add(who)
        caller = f"user {user_name(uid)} (uid {uid})" if uid is not None else f"remote caller {who}"
        log.warning("refused %s on %s (%d): %s %s; further refusals of this caller are not logged",
                    caller, self.what, refusal.status, request.method, request.path)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_id(name: str) -> int:
    """The gid of group ``name``; ``ConfigError`` if this host has no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"--http-group: no group {name!r} on this host; create it (groupadd {name}) "
                          "or name another") from None


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    auth = headers.get("Authorization", "")
    return auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else None
