"""CURVE key pairs for remote writers: `tracecap keys`, and loading keys safely.

Files are in pyzmq's certificate format (``zmq.auth.load_certificate`` reads them, and
``ThreadAuthenticator.configure_curve`` reads a directory of ``*.key`` files as an allow-list),
but they are not written with ``zmq.auth.create_certificates``: that opens the secret file with a
plain ``open(..., "w")``, so its mode depends on the umask (0644 under the usual 022) and it
follows a symlink planted at the name. Here the secret file is created with ``O_EXCL |
O_NOFOLLOW`` and mode 0600 set on the open fd, so neither the umask nor a pre-existing file can
make it readable by anyone else.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from dataclasses import dataclass

import zmq

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
PUBLIC_MODE = 0o644
SECRET_MODE = 0o600
#: Names become file names: no path separators, no leading dot (hidden files are easy to miss
#: in an allow-list directory).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A CURVE key in Z85 text is 40 characters and decodes to 32 bytes.
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")

_BANNER = """#   ****  Generated on {now} by tracecap keys  ****
#   ZeroMQ CURVE {what} Certificate
#   {advice}

"""
_PUBLIC_ADVICE = "Copy this file to the bridge's allow-list directory (--allow) or to writers."
_SECRET_ADVICE = "DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class KeyFileError(ValueError):
    """A key file that cannot be made or used; the message says which file and why."""


@dataclass(frozen=True)
class CurveClient:
    """What a CURVE client socket needs: the server's public key and its own key pair (Z85)."""

    server_public: bytes
    public: bytes
    secret: bytes


def default_name() -> str:
    """The short host name, so that an allow-list reads as a list of the writers' hosts."""
    name = socket.gethostname().split(".")[0]
    return name if _NAME.fullmatch(name) else "tracecap"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyFileError(
            f"--name {name!r}: expected letters, digits, '.', '_' or '-' (at most 64, "
            "not starting with '.' or '-')"
        )
    return name


def _certificate(what: str, advice: str, public: bytes, secret: bytes | None) -> bytes:
    import datetime  # here, as zmq.auth in _load: every writer imports this module

    now = datetime.datetime.now().isoformat(timespec="seconds")
    text = _BANNER.format(now=now, what=what, advice=advice) + "metadata\ncurve\n"
    text += f'    public-key = "{public.decode("ascii")}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode("ascii")}"\n'
    return text.encode("ascii")


def _create(path: str, data: bytes, mode: int) -> None:
    """Write a new file with exactly ``mode``: O_EXCL refuses any existing file or symlink."""
    try:
        fd = os.open(path, _CREATE, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask only ever removes bits; set them exactly
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    os.close(fd)


def make_keypair(directory: str, name: str) -> tuple[str, str]:
    """Create ``DIR/NAME.key`` (public, 0644) and ``DIR/NAME.key_secret`` (0600).

    Refuses if either exists: overwriting a key silently locks out every peer that trusts it.
    The directory is created (0755) when missing; the secret's protection is its own mode.
    """
    check_name(name)
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o755)
        except OSError as exc:
            raise KeyFileError(f"cannot create {directory}: {exc.strerror}") from None
    base = os.path.join(directory, name)
    public_path, secret_path = base + PUBLIC_SUFFIX, base + SECRET_SUFFIX
    for path in (public_path, secret_path):
        if os.path.lexists(path):
            raise KeyFileError(f"{path} exists; refusing to overwrite a key")
    public, secret = zmq.curve_keypair()
    _create(secret_path, _certificate("**Secret**", _SECRET_ADVICE, public, secret), SECRET_MODE)
    try:
        _create(public_path, _certificate("Public", _PUBLIC_ADVICE, public, None), PUBLIC_MODE)
    except KeyFileError:
        os.unlink(secret_path)  # half a pair is worse than none: the next attempt would refuse
        raise
    return public_path, secret_path


def _load(path: str) -> tuple[bytes, bytes | None]:
    # imported here: zmq.auth brings logging, 7 ms of each writer's start (-X importtime),
    # which readiness waits for; only CURVE clients and servers read keys
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KeyFileError(f"cannot read key {path}: {reason}") from None
    for key in (public, secret):
        if key is not None and not _Z85_KEY.fullmatch(key):
            raise KeyFileError(f"{path}: not a CURVE key (expected 40 Z85 characters)")
    return public, secret


def load_public(path: str) -> bytes:
    """The public key of a certificate file (a ``.key``; a ``.key_secret`` holds it too)."""
    return _load(path)[0]


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file that only its owner can read.

    Like ssh with its private keys, a secret that others can read is refused rather than used:
    it may already be someone else's too.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "chmod 600 it, or make a new pair"
        )
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key (a .key_secret file is needed)")
    return public, secret


def load_client(server_key: str, client_key: str) -> CurveClient:
    """The keys a writer's CURVE SUB socket needs, from the two files named on its command line."""
    public, secret = load_secret(client_key)
    return CurveClient(server_public=load_public(server_key), public=public, secret=secret)


def allow_list(directory: str) -> list[str]:
    """The ``*.key`` files the authenticator will trust (it reads the same glob)."""
    if not os.path.isdir(directory):
        raise KeyFileError(f"--allow {directory}: not a directory")
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(PUBLIC_SUFFIX))
    except OSError as exc:
        raise KeyFileError(f"--allow {directory}: {exc.strerror}") from None
    paths = [os.path.join(directory, n) for n in names]
    for path in paths:
        load_public(path)  # a broken file would make configure_curve drop the whole list
    return paths


def keys_command(directory: str, name: str | None) -> int:
    """`tracecap keys DIR [--name NAME]`: make one pair and say where the halves go."""
    public_path, secret_path = make_keypair(directory, name or default_name())
    print(f"public key: {public_path}  (give to the other side)")
    print(f"secret key: {secret_path}  (mode 0600; keep here, readable only by its user)")
    return 0
