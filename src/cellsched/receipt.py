"""Signed grant receipts: Ed25519 over canonical JSON, verifiable offline with the public key."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cellsched.errors import BadInput, Failed


def key_paths(cluster_path: Path) -> tuple[Path, Path]:
    """(private, public) key files beside the cluster config."""
    return cluster_path.parent / "cellsched.key", cluster_path.parent / "cellsched.pub"


def create_keys(private: Path, public: Path) -> bool:
    """Create the cluster key pair if absent (private part readable by its owner only)."""
    if private.exists():
        return False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return True


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# The private key last loaded, by (path, mtime, size, inode): a server signs a receipt per
# grant, and parsing the PEM each time cost more than the signature. A key file that is
# replaced or rewritten is loaded again.
_KEY: tuple[tuple[str, int, int, int], Any] | None = None


def _private_key(private: Path) -> Any:
    global _KEY
    from cryptography.hazmat.primitives import serialization

    try:
        st = private.stat()
        stamp = (str(private), st.st_mtime_ns, st.st_size, st.st_ino)
        kept = _KEY
        if kept is not None and kept[0] == stamp:
            return kept[1]
        key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    except FileNotFoundError:
        raise BadInput(f"{private}: no cluster key (run `cellsched init`)") from None
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
    from cryptography.hazmat.primitives import serialization

    try:
        doc = json.loads(receipt)
        payload, sig = doc["payload"], base64.b64decode(doc["signature"])
    except (ValueError, KeyError, TypeError):
        raise Failed("receipt is not well-formed") from None
    try:
        key = serialization.load_pem_public_key(public.read_bytes())
    except FileNotFoundError:
        raise BadInput(f"{public}: no public key") from None
    try:
        key.verify(sig, _canonical(payload))  # type: ignore[call-arg, union-attr]
    except InvalidSignature:
        raise Failed("receipt signature does not match the cluster key") from None
    return payload
