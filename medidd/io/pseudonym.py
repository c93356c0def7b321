"""Pseudonymous keys for patients and series: a salted SHA-256 (HMAC) of the local identifier.

The salt is 32 random bytes created once per site and kept there (never shipped). The same
identifier and salt always give the same key, so reruns and audits agree; without the salt a key
cannot be linked back to a PatientID by hashing guesses.

Example:
    >>> salt = bytes(range(32))
    >>> key = pseudonymise("PAT-0001", salt)
    >>> key.startswith("p-"), len(key)
    (True, 14)
    >>> key == pseudonymise("PAT-0001", salt)
    True
    >>> pseudonymise("1.2.3", salt, prefix="s").startswith("s-")
    True
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SALT_BYTES = 32
KEY_HEX_CHARS = 12


def load_or_create_salt(path: Path) -> bytes:
    """Return the site salt stored at ``path``; create it (32 random bytes, mode 0600) if absent.

    Creation is atomic and never overwrites: the bytes are written to a private temporary file
    and hard-linked into place, so two processes starting together end up with the same salt.

    Args:
        path: the salt file, kept at the site (for example ``~/.medidd/salt``).

    Raises:
        ValueError: the file exists but does not hold exactly 32 bytes.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "salt"
        >>> s = load_or_create_salt(p)
        >>> len(s), s == load_or_create_salt(p), oct(p.stat().st_mode & 0o777)
        (32, True, '0o600')
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SALT_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
                logger.info("created a new site salt (keep it at the site; never ship it)")
            except FileExistsError:
                pass  # another process created it first: use theirs
        finally:
            Path(tmp).unlink(missing_ok=True)
    data = path.read_bytes()
    if len(data) != SALT_BYTES:
        raise ValueError(
            f"salt file {path} holds {len(data)} bytes, expected {SALT_BYTES}: restore the site's "
            "salt from its backup (a new salt changes every patient key)"
        )
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("salt file %s is readable by other users: chmod 600 it", path)
    return data


def pseudonymise(identifier: str, salt: bytes, prefix: str = "p") -> str:
    """Salted SHA-256 (HMAC) of ``identifier``, shortened to ``"<prefix>-<12 hex>"``.

    Args:
        identifier: the local identifier (PatientID, folder name, series UID...).
        salt: the site salt from :func:`load_or_create_salt`.
        prefix: ``"p"`` for patients, ``"s"`` for series.

    Example:
        >>> pseudonymise("x", b"0" * 32) != pseudonymise("x", b"1" * 32)
        True
    """
    if len(salt) < 16:
        raise ValueError(f"salt is {len(salt)} bytes: use load_or_create_salt() (32 bytes)")
    digest = hmac.new(salt, identifier.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:KEY_HEX_CHARS]}"
