"""Vault/OpenBao interoperability: KV v2 as a source of master secrets, and back.

* :func:`pull` — fetch every ``vault = "<mount>/<path>#<field>[@N]"`` value, compare it
  with the decrypted master file, and re-encrypt the master only when it changed;
* :func:`push` — write master secrets into KV v2 with check-and-set;
* :func:`access` / :func:`policies` — who can read what (hosts x secrets) and one HCL
  policy per host granting read on exactly its secrets' KV v2 data paths.

Where Vault is and how to log in comes from ``[vaultpy.vault]`` in hosts.toml and the
usual environment variables (``BAO_ADDR``/``VAULT_ADDR``, ``BAO_TOKEN``/``VAULT_TOKEN``,
``BAO_NAMESPACE``/``VAULT_NAMESPACE``, ``BAO_CACERT``/``VAULT_CACERT``), which override the
file.  hvac is the client.

Everything that can fail is checked before anything is written: a pull that cannot fetch
every selected value writes no master file, a push that finds a conflict writes nothing.
Secret values never appear in messages, results or JSON.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from vaultpy import age, cache, identities, masters, vaultstate
from vaultpy._internal import ageformat, fsutil, sigint, writes
from vaultpy.errors import Problem, VaultpyError, display_path, key_path
from vaultpy.model import (
    Config,
    Host,
    VaultRef,
    VaultSettings,
    did_you_mean,
    shown_address,
    vault_address_ok,
)

TIMEOUT = 15.0                       # seconds per HTTP request
TOKEN_FILE = "~/.vault-token"        # where `vault login` and `bao login` keep the token
_ENV = {
    "addr": ("BAO_ADDR", "VAULT_ADDR"),
    "token": ("BAO_TOKEN", "VAULT_TOKEN"),
    "namespace": ("BAO_NAMESPACE", "VAULT_NAMESPACE"),
    "ca_cert": ("BAO_CACERT", "VAULT_CACERT"),
    "ca_path": ("BAO_CAPATH", "VAULT_CAPATH"),
}
Status = str   # "created" | "updated" | "unchanged" (pull); "missing" | "differs" (--check)


# --------------------------------------------------------------------------- settings

def _env(kind: str) -> tuple[str, str] | None:
    """(variable, value) of the first non-empty variable for ``kind``."""
    for name in _ENV[kind]:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _header_value(value: str, where: str, file: str) -> str:
    """``value`` as an HTTP header can carry it (a token, a namespace): printable ASCII.
    "s.€abc" crashed in the HTTP library (exit 70); a newline was blamed on Vault."""
    if not value.isascii() or not value.isprintable():
        raise VaultpyError(Problem(file, "holds a character an HTTP header cannot carry "
                                   "(not printable ASCII: a line break, a non-ASCII "
                                   "letter)", where, "check the value: copy it again"))
    return value


@dataclass(frozen=True)
class Target:
    """Where Vault is, after the environment has had its say."""

    addr: str
    namespace: str | None
    verify: bool | str
    settings: VaultSettings
    ca_data: bytes | None = None    # a CA directory's certificates (verify names it)


def target(cfg: Config) -> Target:
    settings = cfg.vault or VaultSettings()
    file = display_path(cfg.path)
    env_addr = _env("addr")
    addr = env_addr[1] if env_addr else settings.addr
    if not addr:
        raise VaultpyError(Problem(file, "no Vault address", "vaultpy.vault.addr",
                                   'set addr = "https://vault.example.com:8200" in '
                                   "[vaultpy.vault], or BAO_ADDR / VAULT_ADDR"))
    # (the same check as hosts.toml's: a port out of range was the HTTP library's
    # InvalidURL, a path made every request miss)
    if not re.match(r"https?://[^/\s]", addr) or not vault_address_ok(addr):
        # An address from the environment is not hosts.toml's to blame.
        at = (env_addr[0], "") if env_addr else (file, "vaultpy.vault.addr")
        raise VaultpyError(Problem(at[0], f"invalid Vault address "
                                   f"{shown_address(addr)!r}", at[1],
                                   'use a URL like "https://vault.example.com:8200": a '
                                   "scheme, a host and a port, no path, no "
                                   "user:password@"))
    env_ns = _env("namespace")
    namespace = env_ns[1] if env_ns else settings.namespace
    if namespace:
        _header_value(namespace, "" if env_ns else "vaultpy.vault.namespace",
                      env_ns[0] if env_ns else file)
    verify: bool | str = True
    source = ""                 # where verify came from: the field or variable to name
    env_ca, env_capath = _env("ca_cert"), _env("ca_path")
    if env_ca:
        source, verify = env_ca
    elif settings.ca_cert is not None:
        source, verify = "vaultpy.vault.ca_cert", str(settings.ca_cert)
    elif env_capath:
        source, verify = env_capath
    ca_data = None
    if isinstance(verify, str):
        directory = source in _ENV["ca_path"]
        problem = _ca_problem(verify, directory, addr.startswith("https:"))
        if problem is None and directory:
            ca_data, problem = _ca_dir(verify)
        if problem:
            raise VaultpyError(Problem(file, problem[0], source, problem[1]))
    return Target(addr.rstrip("/"), namespace, verify, settings, ca_data)


def _ca_dir(path: str) -> tuple[bytes, tuple[str, str] | None]:
    """Every certificate in the CA directory ``path``, as Vault's own client reads
    one: each file in it (and below) is PEM certificates, whatever it is called.
    Python's TLS would look only for OpenSSL's hashed names (``openssl rehash``)."""
    import ssl

    check = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # bare: no system store to load
    out: list[bytes] = []
    for top, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = os.path.join(top, name)
            why = ""
            try:        # (a FIFO there must not hang the run: regular files only)
                data = fsutil.read_regular(file)[0]
            except OSError as exc:
                why = f"cannot be read ({exc.strerror})"
            else:
                try:
                    check.load_verify_locations(cadata=data.decode("ascii"))
                except (ssl.SSLError, UnicodeDecodeError, ValueError):
                    why = "holds no PEM certificate"
            if why:
                return b"", (f"CA directory {path}: {file} {why}",
                             "keep only PEM certificates (-----BEGIN CERTIFICATE----- …) "
                             "in it: Vault's client reads every file there")
            out.append(data.rstrip(b"\n") + b"\n")
    if not out:
        return b"", (f"CA directory {path} holds no certificate",
                     "put the PEM file of Vault's CA in it, or use BAO_CACERT / VAULT_CACERT")
    return b"".join(out), None


def _ca_problem(path: str, directory: bool, https: bool) -> tuple[str, str] | None:
    """What is wrong with a CA file (or, ``directory``, a CA directory), if anything."""
    what = "CA directory" if directory else "CA certificate"
    if not os.path.exists(path):
        return (f"{what} {path} does not exist",
                "point it at a directory of Vault's CA certificates" if directory
                else "point it at the PEM file of Vault's CA")
    if directory and not os.path.isdir(path):
        return (f"{what} {path} is not a directory",
                "a PEM file goes in ca_cert or BAO_CACERT / VAULT_CACERT")
    if not directory and os.path.isdir(path):
        return (f"{what} {path} is a directory",
                "a directory of certificates goes in BAO_CAPATH / VAULT_CAPATH")
    if not directory and https:
        # A FIFO would hang the check below (and could not serve requests' second read).
        reason = "is not a regular file" if not os.path.isfile(path) else _unreadable_ca(path)
        if reason:
            return (f"{what} {path} {reason}",
                    "point it at the PEM file of Vault's CA (-----BEGIN CERTIFICATE----- …)")
    return None


def _unreadable_ca(path: str) -> str:
    """Why ``path`` cannot serve as a CA bundle ("" if it can): a TLS failure later
    would blame the server, not the file."""
    import ssl

    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except OSError as exc:               # ssl.SSLError included
        text = getattr(exc, "reason", None) or exc.strerror or str(exc)
        return f"cannot be read as a certificate ({str(text).replace('_', ' ').lower()})"
    return ""


# --------------------------------------------------------------------------- errors

class VaultFailure(Exception):
    """A failed Vault operation: ``message`` and ``hint`` for one problem line."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


_SAID_MAX = 200      # characters of a server's own words quoted in a problem line


def _vault_message(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        text = "; ".join(str(e) for e in errors)
    else:
        text = str(exc.args[0]) if exc.args and exc.args[0] is not None else ""
    text = " ".join(text.replace("*", " ").split())     # Vault's "1 error occurred:\n\t* …"
    return text if len(text) <= _SAID_MAX else text[:_SAID_MAX - 1] + "…"


def _web_page(exc: Exception) -> str | None:
    """When the answer was a web page (a proxy's or load balancer's "502 Bad Gateway"),
    not Vault's JSON: its title, or "" when it has none; else None."""
    errors = getattr(exc, "errors", None)
    text = getattr(exc, "text", None)
    if errors or not isinstance(text, str):
        return None
    head = text.lstrip()[:1024].lower()
    if not (head.startswith(("<!doctype html", "<html", "<head", "<body", "<title"))
            or "<html" in head):
        return None
    m = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    title = " ".join(m.group(1).split()) if m else ""
    return title if len(title) <= 80 else title[:79] + "…"


_NO_NAMESPACE = "namespace not found"       # what Vault and OpenBao answer, with a 404


def _connection_reason(exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip().rstrip(".").lower()
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "timed out"
    return "connection failed"


def _classify(exc: Exception, target: Target, what: str, denied_hint: str) -> VaultFailure:
    """Turn an hvac/requests exception into a one-line failure (never with a value)."""
    import hvac.exceptions as hx  # type: ignore[import-untyped,unused-ignore]
    import requests  # type: ignore[import-untyped,unused-ignore]

    addr = target.addr
    if isinstance(exc, requests.exceptions.SSLError) and re.search(
            r"wrong.version.number|unknown protocol|record layer failure", str(exc), re.I):
        # Not a certificate: the server did not answer in TLS at all.
        return VaultFailure(f"{addr} does not answer in TLS (a plain-HTTP server or port)",
                            f"use {addr.replace('https://', 'http://', 1)} if the server "
                            "has no TLS, or the port it serves TLS on")
    if isinstance(exc, requests.exceptions.SSLError):
        m = re.search(r"certificate verify failed: ([^(]+?)\s*\(", str(exc))
        detail = f" ({m.group(1)})" if m else ""
        ca = target.verify
        if isinstance(ca, str) and os.path.isdir(ca):
            hint = f"check that {ca} holds the CA that signed Vault's certificate"
        elif isinstance(ca, str):
            hint = (f"check that {ca} is the CA that signed Vault's certificate, and that "
                    "the certificate names the host in addr")
        else:
            hint = "set ca_cert in [vaultpy.vault] (or VAULT_CACERT) to Vault's CA"
        return VaultFailure(f"TLS verification of {addr} failed{detail}", hint)
    if isinstance(exc, requests.exceptions.Timeout):
        return VaultFailure(f"Vault at {addr} did not answer in {TIMEOUT:.0f}s",
                            "check the address and the network")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return VaultFailure(f"cannot reach Vault at {addr} ({_connection_reason(exc)})",
                            "check BAO_ADDR / VAULT_ADDR or [vaultpy.vault] addr, and that "
                            "the server is up")
    if isinstance(exc, requests.exceptions.TooManyRedirects):     # see _refuse_redirects
        return VaultFailure(f"Vault at {addr} redirected the request {what} ({exc}); "
                            "vaultpy does not follow redirects: the token would go with "
                            "them", "set addr to the address it redirects to, if you trust "
                            "it")
    if isinstance(exc, requests.exceptions.RequestException):
        return VaultFailure(f"request to Vault at {addr} failed ({type(exc).__name__})")
    page = _web_page(exc)
    if page is not None:
        return VaultFailure(
            f"{addr} sent a web page{f' ({page!r})' if page else ''} instead of Vault's "
            f"answer {what}",
            "a proxy or load balancer answered for Vault: check addr, and that Vault "
            "is up behind it")
    if isinstance(exc, hx.Forbidden):
        return VaultFailure(f"permission denied {what}", denied_hint)
    if isinstance(exc, hx.Unauthorized):
        return VaultFailure(f"not authorised {what}: {_vault_message(exc)}",
                            "log in again (bao login / vault login) or check the AppRole")
    if isinstance(exc, hx.VaultDown):
        return VaultFailure(f"Vault at {addr} is sealed or unavailable",
                            "unseal it or try again later")
    if isinstance(exc, hx.VaultError):
        said = _vault_message(exc)
        if "HTTP request to an HTTPS server" in said:
            return VaultFailure(f"{addr} serves HTTPS, not HTTP",
                                f"use {addr.replace('http://', 'https://', 1)}")
        return VaultFailure(f"Vault refused {what}: {said or type(exc).__name__}")
    raise exc


def _refuse_redirects(response: Any, *_args: Any, **_kwargs: Any) -> None:
    """A requests response hook: a 3xx is an error, never followed (see Session)."""
    if 300 <= response.status_code < 400:
        import requests  # type: ignore[import-untyped,unused-ignore]

        where = response.headers.get("Location", "")
        raise requests.exceptions.TooManyRedirects(
            f"{response.status_code} to {where[:80]}" if where else str(response.status_code),
            response=response)


# --------------------------------------------------------------------------- session

@dataclass(frozen=True)
class KvSecret:
    """One KV v2 read: the fields (None when that version is deleted) and the version."""

    data: dict[str, Any] | None
    version: int
    deleted: bool = False
    destroyed: bool = False
    created: str = ""       # the version's created_time: with the version, names a value


class Session:
    """An authenticated hvac client for one command run."""

    def __init__(self, cfg: Config) -> None:
        import hvac  # type: ignore[import-untyped,unused-ignore]

        self.cfg = cfg
        self.target = target(cfg)
        self.file = display_path(cfg.path)
        import requests  # type: ignore[import-untyped,unused-ignore]

        # Never follow a redirect: requests would resend X-Vault-Token, an AppRole
        # secret ID or a wrapping token (in the body) to wherever it points.
        session = requests.Session()
        session.hooks["response"].append(_refuse_redirects)
        # hvac takes verify from a session it is given (its issue 991), over its own
        # verify argument: without this, ca_cert was ignored.
        self._ca_file = ""
        self._revoke = False
        verify = self.target.verify
        if self.target.ca_data is not None:     # requests takes a file: one for this run
            fd, self._ca_file = tempfile.mkstemp(prefix="vaultpy-ca-", suffix=".pem")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self.target.ca_data)    # public certificates, nothing secret
            except OSError as exc:
                self.close()
                raise VaultpyError(Problem(self.file, "cannot write the CA directory's "
                                           f"certificates to a temp file: {exc.strerror}",
                                           "", "free space in the temp directory "
                                           "(TMPDIR)")) from None
            verify = self._ca_file
        session.verify = verify
        self.client = hvac.Client(url=self.target.addr, token="", verify=verify,
                                  timeout=TIMEOUT, namespace=self.target.namespace,
                                  allow_redirects=False, session=session)
        self._down: VaultFailure | None = None     # first connection failure, reused
        self._token_ok: bool | None = None
        self._kv2: set[str] = set()        # mounts known to be KV version 2

    # -- authentication

    def login(self) -> None:
        settings = self.target.settings
        if settings.auth == "approle":
            self._login_approle(settings)
        else:
            self.client.token = self._token()

    def _token(self) -> str:
        found = _env("token")
        if found:
            return _header_value(found[1], "", found[0])
        path = Path(os.path.expanduser(TOKEN_FILE))
        try:
            token = fsutil.read_regular(path)[0].decode("utf-8").strip()   # never a FIFO
        except FileNotFoundError:
            token = ""
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise VaultpyError(Problem(str(path), f"cannot read the Vault token: {reason}",
                                       "", "set BAO_TOKEN / VAULT_TOKEN instead")) from None
        if not token:
            raise VaultpyError(Problem(
                self.file, "no Vault token", "vaultpy.vault.auth",
                f"set BAO_TOKEN or VAULT_TOKEN, run bao login / vault login (it writes "
                f'{TOKEN_FILE}), or use auth = "approle"'))
        return _header_value(token, "", str(path))

    def _fail(self, where: str, failure: VaultFailure) -> VaultpyError:
        return VaultpyError(Problem(self.target.addr, failure.message, where, failure.hint))

    def _login_approle(self, settings: VaultSettings) -> None:
        secret_id, keep = self._secret_id(settings)
        mount = settings.approle_mount
        where = f"auth/{mount}/login"
        try:
            self.client.auth.approle.login(role_id=settings.role_id, secret_id=secret_id,
                                           mount_point=mount)
        except Exception as exc:
            self._login_failed(exc, settings, where,
                               unwrapped=settings.wrapped_secret_id_file if keep else None)
        if keep is not None:        # it works: now it replaces the saved one
            keep()
        self._revoke = True

    def _login_failed(self, exc: Exception, settings: VaultSettings, where: str,
                      unwrapped: Path | None) -> NoReturn:
        """One line for a failed AppRole login; ``unwrapped``: the wrapped-ID file whose
        secret ID was refused (the ID saved before it is kept: :meth:`_secret_id`)."""
        mount = settings.approle_mount
        failure = _classify(exc, self.target, "to log in with the AppRole",
                            "check role_id and the secret ID")
        import hvac.exceptions as hx  # type: ignore[import-untyped,unused-ignore]

        if _web_page(exc) is not None:
            pass                    # a proxy's page: _classify said so
        elif isinstance(exc, hx.InvalidRequest):
            failure = VaultFailure(
                f"AppRole login failed: {_vault_message(exc) or 'invalid credentials'}",
                "check role_id, and that the secret ID is not expired or used up "
                "(ask for a new one)")
        elif isinstance(exc, hx.Forbidden):
            # Vault and OpenBao answer bad credentials with a 400; a login at a
            # path where no AppRole is enabled with a 403.
            said = _vault_message(exc) or "permission denied"
            failure = VaultFailure(
                f"AppRole login at auth/{mount} refused ({said}): no AppRole auth "
                "method answers there",
                "set approle_mount in [vaultpy.vault] to the path AppRole is enabled "
                "at (bao auth list)")
        elif isinstance(exc, hx.InvalidPath):
            failure = VaultFailure(f"no AppRole auth method at auth/{mount}",
                                   "enable it (bao auth enable approle) or set "
                                   "approle_mount in [vaultpy.vault]")
        if unwrapped is not None:   # the saved ID is kept, the spent token named
            stored = settings.secret_id_file
            failure = VaultFailure(
                f"{failure.message} (with the secret ID unwrapped from "
                f"{display_path(unwrapped)})", f"{failure.hint}; "
                + (f"{display_path(stored)} still holds the secret ID saved before: "
                   f"delete {display_path(unwrapped)} (spent) to log in with it"
                   if stored is not None and stored.exists() else
                   f"delete {display_path(unwrapped)} (spent) and drop a new one"))
        raise self._fail(where, failure) from None

    def _secret_id(self, settings: VaultSettings) -> tuple[str, Callable[[], None] | None]:
        """The AppRole secret ID, and what to do once a login with it worked.  A wrapped
        one (``wrapped_secret_id_file``, when that file exists) is unwrapped — which
        consumes it — and, with ``secret_id_file`` set, saved there (0600) and its spent
        token file removed, once it logged in: later runs log in with the saved ID until
        a new wrapped token is dropped in place."""
        stored, wrapped = settings.secret_id_file, settings.wrapped_secret_id_file
        if wrapped is None or (stored is not None and not wrapped.exists()):
            assert stored is not None       # the model requires one of the two
            return _read_small(stored, "secret ID", "vaultpy.vault.secret_id_file"), None
        token = _wrapping_token(wrapped)
        saved = stored if stored is not None and stored.exists() else None
        secret_id = self._unwrap(token, settings.approle_mount, wrapped, saved)

        def keep() -> None:
            """Once the login with it worked (a token for another role unwraps as well):
            save it, and remove the spent token file."""
            if stored is None:
                return
            try:
                stored.parent.mkdir(parents=True, exist_ok=True)
                fsutil.atomic_write(stored, secret_id.encode() + b"\n", mode=0o600)
            except OSError as exc:
                raise VaultpyError(Problem(display_path(stored), "cannot save the unwrapped "
                                           f"secret ID: {exc.strerror}",
                                           "vaultpy.vault.secret_id_file",
                                           "fix the directory's permissions and ask for a "
                                           "new wrapped secret ID")) from None
            with suppress(OSError):
                wrapped.unlink()
        return secret_id, keep

    def _unwrap(self, token: str, mount: str, wrapped: Path, saved: Path | None) -> str:
        """Look the wrapping token up (who made it?), then unwrap it — once."""
        import hvac.exceptions as hx  # type: ignore[import-untyped,unused-ignore]

        hint = ("a response-wrapped secret ID can be unwrapped only once, within its TTL; "
                "if you did not unwrap it, someone else may have")
        if saved is not None:
            hint += (f"; or delete {display_path(wrapped)} to log in with the saved secret "
                     f"ID in {display_path(saved)}")
        used = VaultFailure("wrapping token already used or expired; ask for a new one", hint)
        where = "sys/wrapping/unwrap"
        try:
            info = self.client.adapter.post("/v1/sys/wrapping/lookup", json={"token": token})
        except hx.InvalidRequest as exc:
            if "not valid or does not exist" in _vault_message(exc):
                raise self._fail(where, used) from None
            raise self._fail(where, _classify(exc, self.target,
                                              "to look up the wrapping token", "")) from None
        except Exception as exc:
            raise self._fail(where, _classify(exc, self.target,
                                              "to look up the wrapping token", "")) from None
        creation = str(((info or {}).get("data") or {}).get("creation_path", ""))
        if not re.fullmatch(rf"auth/{re.escape(mount)}/role/[^/]+/secret-id", creation):
            raise self._fail(where, VaultFailure(
                f"the wrapping token was not made for an AppRole secret ID (creation path "
                f"{creation or 'unknown'!r}); refusing to unwrap it",
                "it may have been tampered with: ask for a new one, made with "
                f"bao write -wrap-ttl=… -f auth/{mount}/role/<role>/secret-id"))
        try:
            # The wrapping token itself authenticates the unwrap (no other token needed).
            self.client.token = token
            try:
                response = self.client.sys.unwrap()
            finally:
                self.client.token = ""
        except hx.InvalidRequest as exc:
            if "not valid or does not exist" in _vault_message(exc):
                raise self._fail(where, used) from None
            raise self._fail(where, _classify(exc, self.target,
                                              "to unwrap the secret ID", "")) from None
        except Exception as exc:
            raise self._fail(where, _classify(exc, self.target,
                                              "to unwrap the secret ID", "")) from None
        secret_id = ((response or {}).get("data") or {}).get("secret_id")
        if not isinstance(secret_id, str) or not secret_id:
            raise self._fail(where, VaultFailure("the wrapping token held no secret_id",
                                                 "ask for a wrapped AppRole secret ID"))
        return secret_id

    def close(self) -> None:
        """Revoke the token an AppRole login created (best effort); remove the CA
        directory's bundle."""
        if self._ca_file:
            with suppress(OSError):
                os.unlink(self._ca_file)
            self._ca_file = ""
        if self._revoke:
            self._revoke = False
            with suppress(Exception):   # the token expires on its own anyway
                self.client.auth.token.revoke_self()

    # -- KV v2

    def _call(self, fn: Callable[[], Any], what: str, denied_hint: str) -> Any:
        if self._down is not None:
            raise self._down
        import requests  # type: ignore[import-untyped,unused-ignore]

        try:
            return fn()
        except requests.exceptions.RequestException as exc:
            self._down = _classify(exc, self.target, what, denied_hint)
            raise self._down from None
        except Exception as exc:
            if _NO_NAMESPACE in _vault_message(exc):
                # Every later call would fail the same way, and a path is not at fault.
                self._down = VaultFailure(
                    f"Vault at {self.target.addr} has no namespace "
                    f"{self.target.namespace!r}", "check namespace in [vaultpy.vault] "
                    "or BAO_NAMESPACE / VAULT_NAMESPACE (bao namespace list)")
                raise self._down from None
            failure = _classify(exc, self.target, what, denied_hint)
        if failure.message.startswith("permission denied") and not self._token_valid():
            # A bad token and a valid one made without the default policy both fail to
            # look themselves up (403): say both.
            failure = VaultFailure(
                f"{failure.message}: Vault does not accept the token, not even to look "
                "itself up", "if it is invalid or expired, log in again (bao login / vault "
                "login) or set BAO_TOKEN / VAULT_TOKEN; if it was made without the default "
                f"policy, {denied_hint}")
        raise failure

    def cli(self, command: str) -> str:
        """A ``bao`` command for a hint, run in the namespace vaultpy used."""
        ns = self.target.namespace
        return f"BAO_NAMESPACE={shlex.quote(ns)} {command}" if ns else command

    def _token_valid(self) -> bool:
        """After a 403: can the token look itself up?  (Any valid token with the
        default policy can; a refused lookup means a bad token.)"""
        if self._token_ok is None:
            import hvac.exceptions as hx  # type: ignore[import-untyped,unused-ignore]

            try:
                self.client.auth.token.lookup_self()
                self._token_ok = True
            except hx.Forbidden:
                self._token_ok = False
            except Exception:
                self._token_ok = True     # unknown: do not blame the token
        return self._token_ok

    def read(self, mount: str, path: str, version: int | None = None) -> KvSecret | None:
        """Read ``<mount>/data/<path>``; None when nothing was ever written there."""
        import hvac.exceptions as hx  # type: ignore[import-untyped,unused-ignore]

        location = f"{mount}/{path}"
        data_path = f"{mount}/data/{path}"
        kv = self.client.secrets.kv.v2

        def call() -> Any:
            try:
                return kv.read_secret_version(path=path, mount_point=mount, version=version,
                                              raise_on_deleted_version=False)
            except hx.InvalidPath as exc:
                if _NO_NAMESPACE in _vault_message(exc):
                    raise
                if "no handler for route" in _vault_message(exc):
                    listing = self.cli("bao secrets list")
                    raise VaultFailure(f"no secrets engine is mounted at {mount}/",
                                       f"check the mount in vault = … ({listing})") from None
                body = exc.json if isinstance(exc.json, dict) else {}
                if isinstance(body.get("data"), dict) and body["data"].get("metadata"):
                    return body          # a destroyed version: 404, but with metadata
                return None

        response = self._call(call, f"reading {data_path}",
                              f"the token's policies must grant read on {data_path} "
                              "(vaultpy access --vault-policy writes such a policy)")
        if response is None:
            # Nothing at <mount>/data/<path>: also what a KV version 1 mount answers,
            # where push would then write a secret at "data/<path>" (a path nobody
            # named, under policies nobody meant).
            self._require_kv2(mount)
            return None
        body = response.get("data") if isinstance(response, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise VaultFailure(f"{location} is not a KV version 2 secret",
                               f"make {mount}/ a KV v2 mount (bao secrets enable -version=2 kv)")
        meta = body["metadata"]
        fields = body.get("data")
        return KvSecret(fields if isinstance(fields, dict) else None,
                        _version(meta.get("version"), location),
                        deleted=bool(meta.get("deletion_time")),
                        destroyed=bool(meta.get("destroyed")),
                        created=str(meta.get("created_time") or ""))

    def _require_kv2(self, mount: str) -> None:
        """Raise when ``mount`` is known to be a KV version 1 mount (Vault's own mount
        lookup, which any token with a capability under it may call); unknown (no
        answer, refused) passes."""
        if mount in self._kv2:
            return
        try:
            answer = self.client.adapter.get(f"/v1/sys/internal/ui/mounts/{mount}")
            options = answer["data"]["options"] or {}
            version = str(options.get("version", ""))
            kind = str(answer["data"].get("type", ""))
        except Exception:
            return
        if kind == "kv" and version in ("", "1"):
            raise VaultFailure(f"{mount}/ is a KV version 1 mount: vaultpy reads and "
                               "writes KV version 2 (versions, check-and-set)",
                               f"upgrade it: {self.cli(f'bao kv enable-versioning {mount}/')}"
                               ", or use a KV v2 mount in vault = …")
        self._kv2.add(mount)

    def write(self, mount: str, path: str, data: dict[str, Any], cas: int) -> tuple[int, str]:
        """Write a new version with check-and-set ``cas``; returns the new version and
        its created_time."""
        import hvac.exceptions as hx  # type: ignore[import-untyped,unused-ignore]

        data_path = f"{mount}/data/{path}"

        def call() -> Any:
            try:
                return self.client.secrets.kv.v2.create_or_update_secret(
                    path=path, secret=data, cas=cas, mount_point=mount)
            except hx.InvalidRequest as exc:
                if "check-and-set" in _vault_message(exc):
                    raise VaultFailure(
                        f"{mount}/{path} changed in Vault while pushing (it is no longer "
                        f"at version {cas})", "run vaultpy push again") from None
                raise

        response = self._call(call, f"writing {data_path}",
                              f"the token's policies must grant create and update on "
                              f"{data_path}")
        answer = (response.get("data") if isinstance(response, dict) else None) or {}
        if not isinstance(answer, dict) or "version" not in answer:
            raise VaultFailure(f"{mount}/ did not answer as a KV version 2 mount (no "
                               "version came back)", "check the mount in vault = … "
                               f"({self.cli('bao secrets list -detailed')})")
        return (_version(answer.get("version"), f"{mount}/{path}"),
                str(answer.get("created_time") or ""))


def _version(value: Any, location: str) -> int:
    """A KV version number from the server's answer (0 when it gives none)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str) or \
            not str(value).isdigit() or not str(value).isascii():
        raise VaultFailure(f"Vault answered with a version {str(value)[:20]!r} for "
                           f"{location}, not a number", "check that addr is a Vault or "
                           "OpenBao server (not a proxy rewriting its answers)")
    return int(value)


def _read_small(path: Path, what: str, where: str) -> str:
    try:
        text = fsutil.read_regular(path)[0].decode("utf-8").strip()    # never a FIFO
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        hint = (f"replace it with a regular file holding the {what}"
                if reason == fsutil.NOT_REGULAR else "check the path in [vaultpy.vault]")
        raise VaultpyError(Problem(display_path(path), f"cannot read the {what}: {reason}",
                                   where, hint)) from None
    if not text:
        raise VaultpyError(Problem(display_path(path), f"the {what} file is empty", where,
                                   "put the value in it"))
    return text


def _wrapping_token(path: Path) -> str:
    """The token in a wrapped-secret-ID file: the bare token, or the JSON that
    ``bao write -format=json -wrap-ttl=… …/secret-id`` prints."""
    text = _read_small(path, "wrapped secret ID", "vaultpy.vault.wrapped_secret_id_file")
    if text.startswith("{"):
        try:
            doc = json.loads(text)
            token = (doc.get("wrap_info") or {}).get("token") or doc.get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise VaultpyError(Problem(display_path(path), "no wrap_info.token in this JSON",
                                       "vaultpy.vault.wrapped_secret_id_file",
                                       "store the wrapping token (or bao's -format=json "
                                       "output)"))
        return token
    if len(text.split()) != 1:
        raise VaultpyError(Problem(display_path(path), "not a wrapping token",
                                   "vaultpy.vault.wrapped_secret_id_file",
                                   "the file must hold only the token (hvs./s. …)"))
    return text


@contextmanager
def session(cfg: Config) -> Iterator[Session]:
    s = Session(cfg)
    try:
        s.login()
        yield s
    finally:
        s.close()


SessionFactory = Callable[[Config], Any]


# --------------------------------------------------------------------------- selection

def _problem(cfg: Config, sid: str, message: str, hint: str = "") -> Problem:
    return Problem(display_path(cfg.path), message, f"{key_path('secrets', sid)}.vault", hint)


def select(cfg: Config, ids: Sequence[str]) -> list[tuple[str, VaultRef]]:
    """The Vault-backed secrets to act on: ``ids`` (each must have ``vault = …``), or all."""
    problems: list[Problem] = []
    chosen: list[tuple[str, VaultRef]] = []
    if not ids:
        chosen = [(sid, s.vault) for sid, s in cfg.secrets.items() if s.vault is not None]
        if not chosen:
            raise VaultpyError(Problem(display_path(cfg.path), "no secret has a vault "
                                       "reference", "secrets",
                                       'add vault = "<mount>/<path>#<field>" to a '
                                       "[secrets.<id>] table"))
        return chosen
    for sid in dict.fromkeys(ids):
        secret = cfg.secrets.get(sid)
        if secret is None:
            problems.append(Problem(display_path(cfg.path), f"unknown secret id {sid!r}",
                                    "secrets", did_you_mean(sid, cfg.secrets)
                                    or f"declare [{key_path('secrets', sid)}] in hosts.toml"))
        elif secret.vault is None:
            problems.append(_problem(cfg, sid, f"secret {sid!r} has no vault reference",
                                     'add vault = "<mount>/<path>#<field>" to '
                                     f"[{key_path('secrets', sid)}]"))
        else:
            chosen.append((sid, secret.vault))
    if problems:
        raise VaultpyError(problems)
    return chosen


def _decrypt_existing(cfg: Config, sids: Sequence[str], identity_files: Sequence[Path],
                      ask: age.PassphraseFn, *, required: bool,
                      read: dict[str, bytes] | None = None
                      ) -> tuple[dict[str, tuple[bytes, bool]], list[Problem]]:
    """Plaintext and armor flag of each master file that exists (all must, if
    ``required``); identities are loaded only when some file needs them.  ``read``, if
    given, gets the bytes of each file as read (to tell later whether it changed)."""
    raw: dict[str, bytes] = {}
    problems: list[Problem] = []
    for sid in sids:
        secret = cfg.secrets[sid]
        try:
            raw[sid] = fsutil.read_regular(secret.file)[0]
        except FileNotFoundError:
            if required:
                problems.append(cache.missing_master(cfg, sid))
        except OSError as exc:
            problems.append(Problem(display_path(secret.file), "cannot read master file: "
                                    f"{exc.strerror}", key_path("secrets", sid),
                                    "check the file's permissions"))
    if read is not None:
        read.update(raw)
    if problems or not raw:
        return {}, problems
    keys = identities.load(cfg, identity_files, ask)
    plain: dict[str, tuple[bytes, bool]] = {}
    for sid, data in raw.items():
        try:
            plain[sid] = (age.decrypt(data, keys, display_path(cfg.secrets[sid].file),
                                      secret_id=sid), ageformat.is_armored(data))
        except VaultpyError as exc:
            problems.extend(exc.problems)
    return plain, problems


# --------------------------------------------------------------------------- pull

@dataclass(frozen=True)
class PullItem:
    id: str
    ref: VaultRef
    version: int            # the KV v2 version fetched
    status: Status

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "vault": str(self.ref), "version": self.version,
                "status": self.status}


@dataclass
class PullResult:
    check: bool
    items: list[PullItem] = field(default_factory=list)
    recorded: bool = False      # secrets/vault-versions.toml was rewritten (versions moved)

    @property
    def changed(self) -> list[PullItem]:
        return [i for i in self.items if i.status not in ("unchanged", "edited")]

    @property
    def edited(self) -> list[PullItem]:
        """(--check) masters edited here since their recorded version, not pushed."""
        return [i for i in self.items if i.status == "edited"]

    @property
    def ok(self) -> bool:
        return not (self.check and (self.changed or self.edited))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "check": self.check,
                "secrets": [i.as_dict() for i in self.items],
                "changed": [i.id for i in self.changed], "recorded": self.recorded,
                "edited": [i.id for i in self.edited],
                "problems": []}


def _value(s: Session, ref: VaultRef, reads: dict[tuple[str, str, int | None], Any]
           ) -> tuple[bytes, KvSecret]:
    key = (ref.mount, ref.path, ref.version)
    if key not in reads:
        try:
            reads[key] = s.read(ref.mount, ref.path, ref.version)
        except VaultFailure as exc:
            reads[key] = exc
    got = reads[key]
    if isinstance(got, VaultFailure):
        raise got
    if got is None:
        if ref.version is not None:
            meta = s.cli(f"bao kv metadata get {ref.location}")
            raise VaultFailure(f"no version {ref.version} of {ref.location} in Vault",
                               f"check the @version ({meta})")
        get = s.cli(f"bao kv get {ref.location}")
        raise VaultFailure(f"no secret at {ref.location} in Vault",
                           f"check the path ({get}); {ref.mount}/ must be a KV version 2 mount")
    if got.data is None:
        state = "destroyed" if got.destroyed else "deleted"
        raise VaultFailure(f"version {got.version} of {ref.location} is {state}",
                           s.cli(f"bao kv undelete -versions={got.version} {ref.location}")
                           + ", or pin another version with @N" if state == "deleted" else
                           "write a new version, or pin another one with @N")
    if ref.field not in got.data:
        names = sorted(str(k) for k in got.data)
        close = difflib.get_close_matches(ref.field, names, n=1)
        shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
        raise VaultFailure(f"{ref.location} (version {got.version}) has no field "
                           f"{ref.field!r}" + (f" (fields: {shown})" if names else ""),
                           f"did you mean #{close[0]}?" if close else
                           "fix the #field in vault = …")
    value = got.data[ref.field]
    if not isinstance(value, str):
        kind = {bool: "a boolean", int: "a number", float: "a number", dict: "an object",
                list: "a list", type(None): "null"}.get(type(value), type(value).__name__)
        raise VaultFailure(f"field {ref.field!r} of {ref.location} is {kind}, not a string",
                           "vaultpy keeps each secret as text: store the value as a string")
    return value.encode("utf-8"), got


def _recorded_value(s: Session, ref: VaultRef, entry: vaultstate.Entry,
                    current: KvSecret | None) -> Any:
    """Vault's value of ``ref``'s field at the version ``entry`` records, or None when
    that version cannot be read as it was (gone from KV history, or the secret deleted
    and written again since: its versions start over, so the created_time must match).
    ``current``, a read already made, is used when it is that very version."""
    if current is not None and (current.version, current.created) == (entry.version,
                                                                        entry.created):
        then: KvSecret | None = current
    else:
        # A failure to read it (a 500, the server gone) is no answer: it propagates,
        # and the id fails.  Taken as "no record", Vault won over an unpushed edit.
        then = s.read(ref.mount, ref.path, entry.version)
        if then is not None and then.created != entry.created:
            return None
        if then is not None and then.deleted and not then.destroyed:
            # Soft-deleted: still in Vault's history (undelete brings it back), only
            # unreadable now.  Taken as gone, Vault won over an unpushed edit.
            raise VaultFailure(f"version {entry.version} of {ref.location}, the one it was "
                               "pulled at, is deleted (it can be undeleted)",
                               s.cli(f"bao kv undelete -versions={entry.version} "
                                     f"{ref.location}") + ", then pull again; or vaultpy "
                               "pull --force to take Vault's value")
    return (then.data or {}).get(ref.field) if then is not None else None


def _edited_here(s: Session, ref: VaultRef, entry: vaultstate.Entry | None,
                 current: KvSecret, mine: bytes) -> int | None:
    """The recorded version when the master holds a value that is not Vault's at that
    version: an edit made here and not pushed.  None when there is no such edit, or
    when it cannot be told (no usable record, that version gone): Vault wins then."""
    if entry is None or not entry.matches(str(ref), s.target.addr, s.target.namespace):
        return None
    was = _recorded_value(s, ref, entry, current)
    if not isinstance(was, str) or was.encode("utf-8") == mine:
        return None
    return entry.version


def _entry(s: Session, ref: VaultRef, got: KvSecret | tuple[int, str]) -> vaultstate.Entry:
    """What vault-versions.toml records of the value of ``ref`` read (or written) now."""
    version, created = (got.version, got.created) if isinstance(got, KvSecret) else got
    return vaultstate.Entry(str(ref), s.target.addr, s.target.namespace or "", version,
                            created)


def pull(cfg: Config, ids: Sequence[str] = (), *, check: bool = False, force: bool = False,
         identity_files: Sequence[Path] = (),
         ask: age.PassphraseFn = age.passphrase_from_env_or_tty,
         session_factory: SessionFactory = session) -> PullResult:
    """Fetch the selected values; write each master whose plaintext differs (unless
    ``check``).  A master edited here since the value recorded for it (not pushed) is
    not replaced unless ``force``.  Any failure raises before anything is written."""
    chosen = select(cfg, ids)
    sids = [sid for sid, _ in chosen]
    writes.settle(cfg)          # compare with what an interrupted pull was writing
    was: dict[str, bytes] = {}
    current, problems = _decrypt_existing(cfg, sids, identity_files, ask, required=False,
                                          read=was)
    if problems:
        raise VaultpyError(problems)

    fetched: dict[str, tuple[bytes, KvSecret]] = {}
    entries: dict[str, vaultstate.Entry] = {}
    with session_factory(cfg) as s:
        reads: dict[tuple[str, str, int | None], Any] = {}
        for sid, ref in chosen:
            try:
                fetched[sid] = _value(s, ref, reads)
                entries[sid] = _entry(s, ref, fetched[sid][1])
            except VaultFailure as exc:
                problems.append(_problem(cfg, sid, f"{ref}: {exc.message}", exc.hint))
        recorded = vaultstate.load(cfg, strict=not force)
        edited: dict[str, int] = {}
        for sid, ref in [] if force or problems else chosen:
            if sid not in current or current[sid][0] == fetched[sid][0]:
                continue
            entry = recorded.get(sid)
            if (entry is not None and entry.vault == str(ref)
                    and not entry.matches(str(ref), s.target.addr, s.target.namespace)):
                # The same field, recorded at another address or namespace (localhost
                # for 127.0.0.1, a DNS alias): perhaps this server, perhaps not.  Taken
                # as "no record", Vault won over what may be an unpushed edit.
                at = entry.server + (f", namespace {entry.namespace}"
                                     if entry.namespace else "")
                problems.append(_problem(
                    cfg, sid, f"{ref}: the master differs from Vault, and the version it "
                    f"holds is recorded at {at}, not {s.target.addr}: whether it was "
                    "edited here cannot be told", "pull from the address recorded (addr "
                    "in [vaultpy.vault], or VAULT_ADDR), or vaultpy pull --force to take "
                    "this server's value"))
                continue
            try:
                base = _edited_here(s, ref, recorded.get(sid), fetched[sid][1],
                                    current[sid][0])
            except VaultFailure as exc:     # whether it was edited here: unknown
                problems.append(_problem(cfg, sid, f"{ref}: cannot tell whether it was "
                                         f"edited here: {exc.message}", exc.hint or
                                         "run vaultpy pull again once Vault answers"))
                continue
            if base is not None:
                edited[sid] = base
    if problems:
        raise VaultpyError(problems)

    result = PullResult(check=check)
    for sid, ref in chosen:
        value, version = fetched[sid][0], fetched[sid][1].version
        old = current.get(sid)
        if old is None:
            status = "missing" if check else "created"
        elif sid in edited:
            status = "edited"
            if not check:
                problems.append(_problem(
                    cfg, sid, f"{ref}: edited here since version {edited[sid]}, which it "
                    "was pulled at, and not pushed" + ("" if version == edited[sid] else
                                                       f"; Vault is at version {version}"),
                    "vaultpy push keeps the edit; vaultpy pull --force takes Vault's value"))
        elif old[0] != value:
            status = "differs" if check else "updated"
        else:
            status = "unchanged"
        result.items.append(PullItem(sid, ref, version, status))
    if problems:
        raise VaultpyError(problems)
    if check:
        return result
    # One write of them all: a field pulled with another of the same secret (a password
    # and its user) is never half updated when renc reads the masters; the versions the
    # masters now hold are recorded in the same write (see vaultstate).
    files: list[tuple[Path, bytes | Callable[[], bytes], int]] = [
        (cfg.secrets[item.id].file,
         age.encrypt(fetched[item.id][0], cfg.recipients,
                     armor=current[item.id][1] if item.id in current else False), 0o644)
        for item in result.changed]
    if vaultstate.pending(cfg, entries) is not None:
        # (computed again under the lock: a push recorded meanwhile is kept)
        files.append((vaultstate.path(cfg), vaultstate.under_lock(cfg, entries), 0o644))
        result.recorded = True
    if files:
        # Read before Vault was asked, without the lock: a master another command wrote
        # meanwhile (encrypt, edit) must not be replaced by what was decided without it.
        masters.write_all(cfg, files, based_on={
            cfg.secrets[item.id].file: was.get(item.id) for item in result.changed})
    return result


# --------------------------------------------------------------------------- push

@dataclass(frozen=True)
class PushItem:
    id: str
    ref: VaultRef
    status: str              # "written" | "unchanged" | "failed" | "skipped (pinned)"
    version: int             # Vault's version after the push (or the current one)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "vault": str(self.ref), "status": self.status,
                "version": self.version}


@dataclass
class PushResult:
    items: list[PushItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "secrets": [i.as_dict() for i in self.items],
                "problems": [p.as_dict() for p in self.problems]}


@dataclass
class _Write:
    mount: str
    path: str
    data: dict[str, Any]
    cas: int
    ids: list[tuple[str, VaultRef]]
    same: set[str]          # of those, the ids whose field already held their value


def push(cfg: Config, ids: Sequence[str] = (), *, force: bool = False,
         identity_files: Sequence[Path] = (),
         ask: age.PassphraseFn = age.passphrase_from_env_or_tty,
         session_factory: SessionFactory = session) -> PushResult:
    """Write master secrets into KV v2.  A field Vault already holds with a different
    value is refused unless ``force``; every write uses check-and-set against the
    version read just before, so a concurrent writer makes it fail instead of being
    overwritten.  Conflicts and read failures stop the run before any write."""
    chosen = select(cfg, ids)
    problems: list[Problem] = []
    skipped: list[PushItem] = []
    if not ids:
        # Every secret with vault = …: a pinned one reads a fixed version and is not
        # pushed (a plain `push` failed on it, pushing nothing); named, it is an error.
        skipped = [PushItem(sid, ref, "skipped (pinned)", ref.version or 0)
                   for sid, ref in chosen if ref.version is not None]
        chosen = [(sid, ref) for sid, ref in chosen if ref.version is None]
        if not chosen:
            return PushResult(items=skipped)
    for sid, ref in chosen:
        if ref.version is not None:
            problems.append(_problem(cfg, sid, f"{sid} is pinned to version {ref.version} "
                                     f"({ref}); push always writes a new version",
                                     f"remove @{ref.version} to push"))
    if problems:
        raise VaultpyError(problems)
    # Push the values an interrupted pull was putting in place, not half of them (the
    # rest would look stale, and refused as older than Vault's).
    writes.settle(cfg)
    plain, problems = _decrypt_existing(cfg, [sid for sid, _ in chosen], identity_files, ask,
                                        required=True)
    values: dict[str, str] = {}
    for sid, _ in chosen:
        if sid not in plain:
            continue
        try:
            values[sid] = plain[sid][0].decode("utf-8")
        except UnicodeDecodeError:
            problems.append(Problem(display_path(cfg.secrets[sid].file), "not UTF-8 text; "
                                    "Vault KV v2 stores strings", key_path("secrets", sid),
                                    "push only text secrets (or base64-encode it first)"))
    if problems:
        raise VaultpyError(problems)

    groups: dict[tuple[str, str], list[tuple[str, VaultRef]]] = {}
    for sid, ref in chosen:
        groups.setdefault((ref.mount, ref.path), []).append((sid, ref))

    result = PushResult(items=list(skipped))
    pulled = vaultstate.load(cfg, strict=not force)
    entries: dict[str, vaultstate.Entry] = {}      # what to record once pushed
    with session_factory(cfg) as s:
        to_write: list[_Write] = []
        for (mount, path), members in groups.items():
            try:
                current = s.read(mount, path)
            except VaultFailure as exc:
                problems.extend(_problem(cfg, sid, f"{ref}: {exc.message}", exc.hint)
                                for sid, ref in members)
                continue
            version = current.version if current is not None else 0
            if current is not None and current.data is None and not force:
                # Its latest version is deleted (or destroyed): its other fields, and
                # whether they differ, cannot be known; a write would drop them.
                problems.extend(_problem(
                    cfg, sid, f"{ref}: its latest version ({version}) is deleted in Vault",
                    "undelete it (" + s.cli(f"bao kv undelete -versions={version} {mount}/{path}")
                    + "), or push --force to write only vaultpy's fields") for sid, ref in members)
                continue
            old = dict(current.data or {}) if current is not None else {}
            new = dict(old)
            mine: dict[str, str] = {}
            for sid, ref in members:
                if ref.field in mine and mine[ref.field] != values[sid]:
                    problems.append(_problem(cfg, sid, f"{sid} and another secret both push "
                                             f"to {ref} with different values",
                                             "give each its own #field"))
                    continue
                mine[ref.field] = values[sid]
                if not force and old.get(ref.field) != values[sid]:
                    try:
                        conflict = _conflict(s, ref, current, values[sid], pulled.get(sid))
                    except VaultFailure as exc:     # the recorded version: unreadable now
                        conflict = (f"cannot read the version it was pulled at to compare: "
                                    f"{exc.message}", exc.hint or "run vaultpy push again "
                                    "once Vault answers")
                    if conflict is not None:
                        problems.append(_problem(cfg, sid, f"{ref}: {conflict[0]}",
                                                 conflict[1]))
                new[ref.field] = values[sid]
            if new == old and current is not None and current.data is not None:
                result.items.extend(PushItem(sid, ref, "unchanged", version)
                                    for sid, ref in members)
                entries.update((sid, _entry(s, ref, current)) for sid, ref in members)
            else:
                to_write.append(_Write(mount, path, new, version, members,
                                       {sid for sid, ref in members
                                        if ref.field in old and old[ref.field] == values[sid]}))
        if problems:
            raise VaultpyError(problems)
        try:
            for w in to_write:
                try:
                    written = s.write(w.mount, w.path, w.data, w.cas)
                except VaultFailure as exc:
                    result.problems.extend(_problem(cfg, sid, f"{ref}: {exc.message}",
                                                    exc.hint) for sid, ref in w.ids)
                    result.items.extend(PushItem(sid, ref, "failed", w.cas)
                                        for sid, ref in w.ids)
                    continue
                # The new version holds every field; an id whose value was there already
                # was not pushed, whatever the version says.
                result.items.extend(PushItem(sid, ref, "unchanged" if sid in w.same
                                             else "written", written[0]) for sid, ref in w.ids)
                entries.update((sid, _entry(s, ref, written)) for sid, ref in w.ids)
        except KeyboardInterrupt:
            # What Vault took before the Ctrl-C is recorded: unrecorded, pull called it
            # an edit made here, and push a conflict that --force would settle by
            # overwriting whatever a colleague wrote since (a review).
            with suppress(OSError, VaultpyError), sigint.held():
                vaultstate.record(cfg, entries)
            raise
    order = {sid: i for i, sid in enumerate([*(sid for sid, _ in chosen),
                                             *(item.id for item in skipped)])}
    result.items.sort(key=lambda i: order[i.id])
    # The record takes the lock, which finishes first any write a writer killed since
    # settle left (a journal): the lock is not held across the Vault calls, which wait
    # on the network (and settle's finish, then, is not the last word).  One that
    # cannot be finished stops the record, never what Vault has: the items stay
    # "written", and the problem says where the values are.
    try:
        vaultstate.record(cfg, entries)
    except OSError as exc:
        result.problems.append(Problem(display_path(vaultstate.path(cfg)), "cannot record "
                                       f"the versions pushed: {exc.strerror or exc}", "",
                                       "the values are in Vault; run vaultpy pull to record "
                                       "them"))
    except VaultpyError as exc:
        result.problems.extend(Problem(
            p.file, f"cannot record the versions pushed: {p.message}", p.field,
            "; ".join(filter(None, ("the values are in Vault", p.hint,
                                    "then run vaultpy pull to record them"))))
            for p in exc.problems)
    return result


def _conflict(s: Session, ref: VaultRef, current: KvSecret | None, ours: str,
              recorded: vaultstate.Entry | None) -> tuple[str, str] | None:
    """Vault's field is not the master's value: None when the master was edited on top
    of what Vault still holds (the value recorded at the last pull or push, ``recorded``,
    when it is this field's, at this server, in this namespace, and Vault still has that
    version as it was), else what is wrong and what to do (message, hint)."""
    fix = "vaultpy pull takes Vault's value; push --force overwrites it"
    version = current.version if current is not None else 0
    theirs = (current.data or {}).get(ref.field) if current is not None else None
    if recorded is None or not recorded.matches(str(ref), s.target.addr, s.target.namespace):
        if theirs is None:
            return None                 # nothing there, nothing known: seeding it
        return f"Vault holds a different value (version {version})", fix
    base = recorded.version
    if current is None:
        return (f"deleted in Vault since version {base}, which this master holds",
                "push --force writes it again; vaultpy pull tells you what is there")
    was = _recorded_value(s, ref, recorded, current)
    if was is None:
        return (f"Vault holds a different value (version {version}), and version {base}, "
                "which this master holds, cannot be read as it was to compare", fix)
    if theirs is None:
        return (f"field {ref.field!r} was removed in Vault since version {base}",
                "push --force writes it again; vaultpy pull tells you what is there")
    if was == theirs:
        return None                 # Vault's field unchanged since: the difference is ours
    if was == ours:
        return (f"Vault has a newer value (version {version}; this master holds version "
                f"{base}'s)", "vaultpy pull takes it")
    # Edited here: pull refuses it without --force (as it says itself).
    return (f"changed both here and in Vault (version {base} → {version}) since the last "
            "pull", "vaultpy pull --force takes Vault's value; push --force overwrites it")


# --------------------------------------------------------------------------- access

@dataclass(frozen=True)
class Grant:
    """Host ``host`` can read secret ``secret``: how, with which key, from which file."""

    host: str
    secret: str
    installed_as: str | None            # file name in the generation dir, or None
    templates: tuple[str, ...]          # templates of the host that use it
    recipients: tuple[str, ...]         # the host's keys, normalised (type base64)
    cache_file: Path | None             # None while the master file is missing
    vault: VaultRef | None

    def as_dict(self, root: Path) -> dict[str, Any]:
        return {"host": self.host, "secret": self.secret, "installed_as": self.installed_as,
                "templates": list(self.templates), "recipients": list(self.recipients),
                "cache_file": _rel(self.cache_file, root),
                "vault": str(self.vault) if self.vault else None,
                "vault_path": self.vault.data_path if self.vault else None}


def _rel(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def access(cfg: Config, hosts: Sequence[str] = ()) -> list[Grant]:
    """Every (host, secret) pair where the host receives the secret's ciphertext."""
    selected = _hosts(cfg, hosts)
    hashes, _ = cache.master_hashes(cfg, {sid for h in selected for sid in h.needed})
    grants = []
    for host in selected:
        installed = {d.id: d.name for d in host.deployments}
        for sid in host.needed:
            master = hashes.get(sid)
            cache_file = (cfg.cache_dir / host.name /
                          cache.cache_name(sid, master.sha256, host.recipients)
                          if master is not None else None)
            grants.append(Grant(host.name, sid, installed.get(sid),
                                tuple(t.name for t in host.templates if sid in t.refs),
                                host.recipients, cache_file, cfg.secrets[sid].vault))
    return grants


def _hosts(cfg: Config, names: Sequence[str]) -> list[Host]:
    unknown = [n for n in names if n not in cfg.hosts]
    if unknown:
        problems = []
        for n in unknown:
            problems.append(Problem(display_path(cfg.path), f"unknown host {n!r}", "hosts",
                                    did_you_mean(n, cfg.hosts)
                                    or "hosts are the [hosts.<name>] tables"))
        raise VaultpyError(problems)
    return [cfg.hosts[n] for n in dict.fromkeys(names)] if names else list(cfg.hosts.values())


def policy(cfg: Config, host: str) -> str:
    """An HCL policy granting ``host`` read on exactly its secrets' KV v2 data paths."""
    paths: dict[str, list[str]] = {}
    for sid in cfg.hosts[host].needed:
        ref = cfg.secrets[sid].vault
        if ref is not None:
            paths.setdefault(ref.data_path, []).append(f"{sid} ({ref})")
    lines = [f"# Vault/OpenBao policy for host {host}, written by vaultpy access "
             "--vault-policy.",
             "# Read on exactly the KV v2 values of the host's secrets; load it with",
             f"#   bao policy write vaultpy-{host} FILE"]
    if not paths:
        lines.append("# (none of this host's secrets comes from Vault: it grants nothing)")
    for data_path in sorted(paths):
        lines += ["", *(f"# {what}" for what in paths[data_path]),
                  f'path "{data_path}" {{', '  capabilities = ["read"]', "}"]
    return "\n".join(lines) + "\n"


def policies(cfg: Config, hosts: Sequence[str] = ()) -> dict[str, str]:
    return {h.name: policy(cfg, h.name) for h in _hosts(cfg, hosts)}
