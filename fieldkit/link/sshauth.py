"""Client authentication over SSH: fieldkit's own ed25519 key, IdentityFile keys, and ssh-agent."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from fieldkit.errors import ConnectError
from fieldkit.link.hostkeys import fingerprint
from fieldkit.link.sshconfig import DEFAULT_IDENTITIES, ResolvedSsh, ssh_config_path
from fieldkit.locations import Home

if TYPE_CHECKING:
    import paramiko


# --------------------------------------------------------------------------- client keys

def write_ed25519_key(path: Path, comment: str) -> Path:
    """Create a new ed25519 private key at ``path`` (OpenSSH format, 0600, directory 0700) and
    its ``.pub``. Never overwrites: if another process created ``path`` first, that key stays."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, private)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return path
    finally:
        os.unlink(tmp)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(public + f" {comment}\n".encode())
    return path


def ensure_client_key(home: Home) -> Path:
    """fieldkit's own ed25519 client key (``home.client_key``, 0600, plus an OpenSSH ``.pub``);
    created if missing. Returns the private key's path."""
    path = home.client_key
    if not path.exists():
        write_ed25519_key(path, f"fieldkit@{socket.gethostname()}")
    pub = path.with_name(path.name + ".pub")
    if not pub.exists():  # someone deleted it: derive it again from the private key
        key = _load_key(path)
        pub.write_text(f"{key.get_name()} {key.get_base64()} fieldkit@{socket.gethostname()}\n")
    try:
        os.chmod(path.parent, 0o700)
    except OSError:
        pass
    return path


def _load_key(path: Path) -> "paramiko.PKey":
    import paramiko

    return paramiko.PKey.from_path(str(path))


def _short(path: Path | str) -> str:
    text = str(path)
    home = os.path.expanduser("~")
    return "~" + text[len(home):] if home != "/" and text.startswith(home + os.sep) else text


def _auth_candidates(res: ResolvedSsh, home: Home, allow_agent: bool,
                     skipped: list[str]) -> Iterator[tuple[str, "paramiko.PKey"]]:
    """(label, key) in the order to offer them; unusable files are noted in ``skipped``."""
    import paramiko

    def from_file(path: Path, label: str) -> Iterator[tuple[str, "paramiko.PKey"]]:
        if not path.is_file():
            return
        try:
            key = _load_key(path)
        except paramiko.PasswordRequiredException:
            skipped.append(f"{label} (passphrase-protected: load it into ssh-agent)")
            return
        except Exception as exc:  # unreadable, unsupported type, garbage
            skipped.append(f"{label} (cannot load: {exc})")
            return
        yield label, key

    for name in res.identity_files if res.identity_files_configured else ():
        path = Path(os.path.expanduser(name))
        yield from from_file(path, _short(path))
    try:
        client = ensure_client_key(home)
    except OSError as exc:
        skipped.append(f"fieldkit key {home.client_key} (cannot create: {exc})")
    else:
        yield from from_file(client, f"fieldkit key {client}")
    if res.identities_only:
        return
    if allow_agent and os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent = paramiko.Agent()
            agent_keys = agent.get_keys()
        except Exception as exc:
            skipped.append(f"ssh-agent (cannot talk to it: {exc})")
            agent_keys = ()
        for i, key in enumerate(agent_keys):
            yield f"ssh-agent key {i + 1}", key
    if not res.identity_files_configured:
        for name in DEFAULT_IDENTITIES:
            path = Path(os.path.expanduser(name))
            yield from from_file(path, _short(path))


def _authenticate(t: "paramiko.Transport", res: ResolvedSsh, home: Home, allow_agent: bool) -> None:
    import paramiko

    tried: list[str] = []
    skipped: list[str] = []
    seen: set[bytes] = set()
    hint = (f"put fieldkit's public key ({home.client_key}.pub) in ~{res.user}/.ssh/authorized_keys "
            f"on the device, or set User/IdentityFile for it in {_short(ssh_config_path())}")
    for label, key in _auth_candidates(res, home, allow_agent, skipped):
        blob = key.asbytes()
        if blob in seen:
            continue
        seen.add(blob)
        tried.append(f"{label} ({key.get_name()} {fingerprint(key)})")
        try:
            remaining = t.auth_publickey(res.user, key)
        except paramiko.BadAuthenticationType as exc:
            raise ConnectError(
                f"{res.user}@{res.display} does not accept public-key login "
                f"(it allows: {', '.join(exc.allowed_types) or 'nothing'})",
                hint="enable PubkeyAuthentication in the device's sshd_config and install "
                     f"fieldkit's key ({home.client_key}.pub)") from None
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(
                f"{res.display} closed the connection during authentication as {res.user} "
                f"after trying {'; '.join(tried)}: {exc}",
                hint="too many keys offered (sshd MaxAuthTries)? set IdentityFile and "
                     "IdentitiesOnly yes for this host in ~/.ssh/config") from None
        if remaining:
            raise ConnectError(f"{res.user}@{res.display} wants a second factor "
                               f"({', '.join(remaining)}) after the key; fieldkit does not "
                               "support interactive login", hint=hint)
        if t.is_authenticated():
            return
    lines = "; ".join(tried) if tried else "no usable keys"
    if skipped:
        lines += "; skipped: " + "; ".join(skipped)
    raise ConnectError(f"authentication failed for {res.user}@{res.display}: tried {lines}",
                       hint=hint)
