"""Every path fieldkit keeps on the laptop, in one place.

All state lives under one home: ``$FIELDKIT_HOME`` when set, otherwise the platform's user
data directory (``$XDG_DATA_HOME/fieldkit`` or ``~/.local/share/fieldkit``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    env = os.environ.get("FIELDKIT_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "fieldkit"


@dataclass(frozen=True)
class Home:
    """The laptop-side state directory and the files inside it."""

    root: Path

    @classmethod
    def current(cls) -> "Home":
        return cls(default_home())

    def ensure(self) -> "Home":
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    @property
    def inventory(self) -> Path:
        """Devices known to this laptop (TOML)."""
        return self.root / "inventory.toml"

    @property
    def known_hosts(self) -> Path:
        """SSH host keys of devices trusted through fieldkit (OpenSSH known_hosts format)."""
        return self.root / "known_hosts"

    @property
    def ssh_dir(self) -> Path:
        """fieldkit's own SSH client key (used for simulated devices and offered to real ones)."""
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def profiles_dir(self) -> Path:
        """User profiles; a file here overrides a bundled profile of the same name."""
        return self.root / "profiles"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"


    @property
    def operator_key(self) -> Path:
        """The operator's signing key (ECDSA P-256, PKCS#8 PEM, mode 0600); made by `fieldkit init`."""
        return self.root / "operator_key.pem"

    @property
    def operator_file(self) -> Path:
        """The operator's name and key fingerprint (JSON), written next to the key."""
        return self.root / "operator.json"

    @property
    def site_manifest(self) -> Path:
        """The site manifest the TUI loads (JSON: the signed manifest's path and the release public key's
        path), written by ``fieldkit --manifest FILE --manifest-key PUB.pem``; re-verified at every start."""
        return self.root / "manifest.json"

    @property
    def journal_db(self) -> Path:
        """The operator journal (SQLite, WAL, append-only, hash-chained, signed)."""
        return self.root / "journal.db"

    @property
    def journal_mark(self) -> Path:
        """Where the last passing verification of the journal stopped (seq, hash): the audit screen
        checks only what came after it (JSON, not signed; losing it costs one full verification)."""
        return self.root / "journal.db.verified"

    @property
    def run_dir(self) -> Path:
        """Run-time records of this laptop's fieldkit processes: who holds which serial port, and
        requests to let go of one (``run/serial/``)."""
        return self.root / "run"
