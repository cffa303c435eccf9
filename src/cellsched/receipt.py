"""Signed grant receipts: Ed25519 over canonical JSON, verifiable offline with the public key."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cellsched.errors import BadInput, Failed, NotFound
from cellsched.files import check_writable, read_bytes


def key_paths(cluster_path: Path) -> tuple[Path, Path]:
    """(private, public) key files beside the cluster config."""
    return cluster_path.parent / "cellsched.key", cluster_path.parent / "cellsched.pub"


def create_keys(private: Path, public: Path) -> bool:
    """Create the cluster key pair if absent (private part readable by its owner only);
    with the private key there and the public one missing, write the public one from it.
    Whether a new pair was made."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def write_public(key: Any) -> None:
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    if private.exists():
        if not os.path.lexists(public):
            write_public(load_private_key(private))
        return False
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    write_public(key)
    return True


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# The private key last loaded, by (path, mtime, size, inode): a server signs a receipt per
# grant, and parsing the PEM each time cost more than the signature. A key file that is
# replaced or rewritten is loaded again.
_KEY: tuple[tuple[str, int, int, int], Any] | None = None

# A PEM Ed25519 key is about 120 bytes; anything near this is not one.
MAX_KEY_BYTES = 64 * 1024

_DAMAGED = "restore it from a backup, or run `cellsched init` with a cluster config in a fresh directory"


def _key_bytes(path: Path, missing: str, what: str) -> bytes:
    """The bytes of a key file; one line naming it (BadInput) if it is not there (``missing``
    says what to do) or is not a regular file of a key's size."""
    try:
        return read_bytes(path, MAX_KEY_BYTES)
    except NotFound:
        raise BadInput(f"{path}: {missing}") from None
    except BadInput as e:
        raise BadInput(f"{e.message}: the cluster {what} must be a PEM file; {_DAMAGED}") from None


def load_private_key(private: Path) -> Any:
    """The Ed25519 signing key in ``private``; one line naming the file (BadInput) if
    there is none, or it is not a regular file or not a PEM Ed25519 private key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = _key_bytes(private, "no cluster key (run `cellsched init`)", "signing key")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:  # encrypted with a password: the server could not sign unattended
        raise BadInput(f"{private}: the cluster signing key is protected by a password; {_DAMAGED}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BadInput(f"{private}: not a PEM private key (the cluster signing key is damaged); {_DAMAGED}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"{private}: not an Ed25519 key (the cluster signs with Ed25519); {_DAMAGED}")
    return key


def load_public_key(public: Path) -> Any:
    """The Ed25519 public key in ``public``; one line naming the file (BadInput) if there
    is none, or it is not a regular file or not a PEM Ed25519 public key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = _key_bytes(public, "no public key", "public key")
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise BadInput(f"{public}: not a PEM public key (the cluster public key is damaged); {_DAMAGED}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput(f"{public}: not an Ed25519 key (the cluster signs with Ed25519); {_DAMAGED}")
    return key


def check_keys(private: Path, public: Path) -> bool:
    """For ``cellsched init``, before it writes anything: whether the private key is there
    and usable (True; a missing public key is then written from it by
    :func:`create_keys`), or absent (False: the pair will be created, a public key file
    there replaced). BadInput naming the file if either is there but cannot be used: a
    directory, a link to nothing, not a PEM Ed25519 key, a pair that does not belong
    together. Reads only."""
    from cryptography.hazmat.primitives import serialization

    if not os.path.lexists(private):
        check_writable(private)
        if os.path.lexists(public):
            check_writable(public)
        return False
    if not private.exists():
        raise BadInput(f"{private}: is a symbolic link to nothing; {_DAMAGED}")
    key = load_private_key(private)
    if not os.path.lexists(public):
        check_writable(public)
        return True
    pub = load_public_key(public)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if pub.public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise BadInput(f"{public}: does not match the private key {private.name} beside it; "
                       f"move it away and run `cellsched init` again to write it from {private.name}")
    return True


def _private_key(private: Path) -> Any:
    global _KEY
    try:
        st = private.stat()
    except FileNotFoundError:
        raise BadInput(f"{private}: no cluster key (run `cellsched init`)") from None
    except OSError:
        st = None
    stamp = None if st is None else (str(private), st.st_mtime_ns, st.st_size, st.st_ino)
    kept = _KEY
    if kept is not None and stamp is not None and kept[0] == stamp:
        return kept[1]
    key = load_private_key(private)
    if stamp is not None:
        _KEY = (stamp, key)
    return key


def sign(payload: dict[str, Any], private: Path) -> str:
    """The receipt: JSON with the payload and its base64 signature."""
    key = _private_key(private)
    sig = key.sign(_canonical(payload))
    return json.dumps({"payload": payload, "signature": base64.b64encode(sig).decode()}, sort_keys=True)


def verify(receipt: str, public: Path) -> dict[str, Any]:
    """Check a receipt's signature; return its payload or raise :class:`Failed`."""
    from cryptography.exceptions import InvalidSignature

    try:
        doc = json.loads(receipt)
        payload, sig = doc["payload"], base64.b64decode(doc["signature"])
    except (ValueError, KeyError, TypeError):
        raise Failed("receipt is not well-formed") from None
    key = load_public_key(public)
    try:
        key.verify(sig, _canonical(payload))  # type: ignore[call-arg, union-attr]
    except InvalidSignature:
        raise Failed("receipt signature does not match the cluster key") from None
    return payload
