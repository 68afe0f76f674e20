"""Plugin identities and recipients, with a real plugin process.

``tests/plugins/age-plugin-vptest`` implements the age plugin protocol (C2SP
age-plugin.md: recipient-v1 and identity-v1) like a PIN-protected hardware key, and
logs every start and every request of user interaction to ``$VPTEST_LOG``.  It is put
on PATH for vaultpy (through pyrage) and for the real ``age`` CLI alike.

What pyrage does, measured here: every decryption starts the plugin again, once per
header stanza it tries (until one unwraps), and the plugin asks for its PIN again in
each process.  vaultpy puts the first request to the user and answers the others from
a per-run cache shared with renc's forked workers, so the user is asked once per run;
a PIN that was rejected is never offered again (a hardware key would lock itself).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Host, Repo, age_decrypt, age_keygen, assert_one_clean_error, need, ssh_keygen
from test_prompts import no_tty, run_in_pty, tty_env, vaultpy_argv

from vaultpy import age, renc
from vaultpy._internal import forksafe, fsutil
from vaultpy.errors import VaultpyError

PLUGIN_SOURCE = Path(__file__).parent / "plugins" / "age-plugin-vptest"
PIN = "424242"
PIN_PROMPT = r"Enter PIN for vptest key \w+ \[age-plugin-vptest\]: "
HOSTS, SECRETS = 3, 4
PLAINTEXTS = {f"s{i}": f"plugin secret {i}\n".encode() for i in range(SECRETS)}


@dataclass
class Plugin:
    bin: Path
    log: Path
    env: dict[str, str]            # PATH with the plugin first, VPTEST_LOG

    def generate(self, directory: Path, name: str, pin: str = PIN) -> tuple[Path, str]:
        """A new identity file (made by the plugin itself); returns (file, recipient)."""
        out = subprocess.run([str(self.bin / "age-plugin-vptest"), "--generate", "--pin", pin],
                             capture_output=True, text=True, check=True).stdout
        path = directory / name
        path.write_text(out)
        return path, re.search(r"# recipient: (\S+)", out).group(1)  # type: ignore[union-attr]

    def events(self) -> list[tuple[int, str, str]]:
        """(pid, event, detail) for every line logged since the last :meth:`reset`."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            pid, event, *rest = line.split(" ", 2)
            out.append((int(pid), event, rest[0] if rest else ""))
        return out

    def count(self) -> Counter[str]:
        return Counter(e for _, e, _ in self.events())

    def starts(self, machine: str) -> int:
        return sum(1 for _, e, d in self.events() if e == "start" and d == machine)

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Plugin:
    """age-plugin-vptest on PATH (run by this interpreter, which has cryptography)."""
    bin_dir = tmp_path_factory.mktemp("plugin-bin")
    target = bin_dir / "age-plugin-vptest"
    text = PLUGIN_SOURCE.read_text().split("\n", 1)[1]
    target.write_text(f"#!{sys.executable}\n{text}")
    target.chmod(0o755)
    log = bin_dir / "vptest.log"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VPTEST_LOG": str(log)}
    return Plugin(bin_dir, log, env)


@pytest.fixture
def on_path(plugin, monkeypatch) -> Iterator[Plugin]:
    """The plugin on PATH for library calls in this process, with a fresh log; the
    answers of one test (its "run") are not seen by the next."""
    for k, v in plugin.env.items():
        monkeypatch.setenv(k, v)
    plugin.reset()
    age.forget_plugin_answers()
    yield plugin
    age.forget_plugin_answers()


@pytest.fixture(scope="module")
def pkey(plugin, tmp_path_factory) -> tuple[Path, str]:
    return plugin.generate(tmp_path_factory.mktemp("pkey"), "yubi.txt")


def counting_ask(answer: str = PIN) -> tuple[list[str], age.PassphraseFn]:
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return answer

    return asked, ask


# --------------------------------------------------------------------------- the library


def test_plugin_refuses_an_unknown_state_machine(plugin):
    proc = subprocess.run([str(plugin.bin / "age-plugin-vptest"), "--age-plugin=identity-v9"],
                          input=b"", capture_output=True)
    assert proc.returncode == 1 and b"unknown state machine" in proc.stderr


def test_round_trip_and_one_prompt_for_many_files(on_path, pkey, tmp_path):
    ident, recipient = pkey
    assert age.normalize_recipient(recipient, allow_plugin=True) == recipient
    cts = [age.encrypt(b"file %d" % i, [recipient]) for i in range(5)]
    assert on_path.starts("recipient-v1") == 5
    assert all(b"\n-> vptest " in ct for ct in cts)
    on_path.reset()
    asked, ask = counting_ask()
    ids = age.load_identity_file(ident, ask)
    assert [i.kind for i in ids] == ["plugin"] and asked == []      # nothing run yet
    for i, ct in enumerate(cts):
        assert age.decrypt(ct, ids, f"f{i}") == b"file %d" % i
    # the plugin ran once per file and asked each time; the user was asked once
    assert on_path.starts("identity-v1") == 5
    assert on_path.count()["request-secret"] == 5
    assert len(asked) == 1 and re.fullmatch(PIN_PROMPT, asked[0]), asked


def test_renc_forks_its_workers_only_once_pyrage_threads_are_gone(on_path, pkey, monkeypatch):
    """pyrage's plugin client leaves a thread behind after a plugin call (age's notice
    for a slow plugin, polling every 100 ms). Pools forked while it lived hung about once
    in 85 first runs; renc's pool waits for it."""
    ident, recipient = pkey
    ct = age.encrypt(b"x", [recipient])
    _asked, ask = counting_ask()
    ids = age.load_identity_file(ident, ask)
    time.sleep(0.3)                                 # the encryption's thread is gone
    monkeypatch.setattr(forksafe, "_baseline", forksafe.threads())
    monkeypatch.setattr(renc, "_FORK_WAIT", 10.0)   # a loaded CI machine: never give up
    assert age.decrypt(ct, ids, "x") == b"x"
    assert forksafe.threads() > forksafe._baseline      # the thread pyrage left
    assert renc._can_fork()
    assert forksafe.threads() == forksafe._baseline


def test_plugin_code_marks_the_threads_not_to_wait_for(on_path, pkey, monkeypatch):
    """The count is taken before a plugin first runs, by loading a plugin identity or
    encrypting to a plugin recipient; until then no fork waits for anything."""
    ident, recipient = pkey
    for first_use in (lambda: age.load_identity_file(ident, counting_ask()[1]),
                      lambda: age.encrypt(b"x", [recipient])):
        monkeypatch.setattr(forksafe, "_baseline", None)
        done = threading.Event()
        other = threading.Thread(target=done.wait, args=(10,))  # a library caller's
        other.start()
        try:
            assert forksafe.settled(0)             # at once: nothing to wait for
            first_use()
            assert forksafe._baseline is not None
            assert forksafe.settled(5)              # `other` is not waited for
        finally:
            done.set()
            other.join()


def test_renc_works_alone_when_plugin_threads_outlive_the_wait(monkeypatch):
    done = threading.Event()
    time.sleep(0.3)                 # an earlier test's pyrage thread (<= 100 ms) is gone
    monkeypatch.setattr(forksafe, "_baseline", forksafe.threads())
    monkeypatch.setattr(renc, "_FORK_WAIT", 0.2)
    lingering = threading.Thread(target=done.wait, args=(10,))
    lingering.start()
    try:
        start = time.monotonic()
        assert not renc._can_fork()
        assert 0.2 <= time.monotonic() - start < 2
        ran_in: list[int] = []
        monkeypatch.setattr(renc, "_run_job", lambda job: ran_in.append(os.getpid()) or [])
        delivered: list[object] = []
        renc._execute(["a", "b", "c"], 2,  # type: ignore[list-item]
                      lambda job, replies: delivered.append(job))
        assert ran_in == [os.getpid()] * 3          # no pool: done in this process
        assert delivered == ["a", "b", "c"]
    finally:
        done.set()
        lingering.join()


def test_plain_keys_are_tried_before_the_plugin(on_path, pkey, tmp_path):
    ident, recipient = pkey
    plain, plain_pub = age_keygen(tmp_path, "plain.txt")
    both = tmp_path / "both.txt"
    both.write_text(ident.read_text() + plain.read_text())     # the plugin line first
    asked, ask = counting_ask()
    ids = age.load_identity_file(both, ask)
    assert [i.kind for i in ids] == ["x25519", "plugin"]
    ct = age.encrypt(b"x", [recipient, plain_pub])
    on_path.reset()
    assert age.decrypt(ct, ids, "x") == b"x"
    assert on_path.events() == [] and asked == []               # no plugin, no PIN


def test_one_plugin_process_per_stanza_tried(on_path, pkey, tmp_path):
    """Measured: pyrage hands the plugin one stanza per process; a file whose plugin
    stanza comes after two others starts the plugin three times."""
    ident, recipient = pkey
    others = [age_keygen(tmp_path, f"o{i}.txt")[1] for i in range(2)]
    ct = age.encrypt(b"late", [*others, recipient])
    on_path.reset()
    asked, ask = counting_ask()
    assert age.decrypt(ct, age.load_identity_file(ident, ask), "late") == b"late"
    assert on_path.starts("identity-v1") == 3
    assert on_path.count()["request-secret"] == 1 and len(asked) == 1


def test_wrong_pin_is_tried_once_and_not_offered_again(on_path, tmp_path):
    ident, recipient = on_path.generate(tmp_path, "k.txt")
    cts = [age.encrypt(b"x", [recipient]) for _ in range(3)]
    on_path.reset()
    asked, ask = counting_ask("000000")
    ids = age.load_identity_file(ident, ask)
    with pytest.raises(VaultpyError, match="wrong PIN") as first:
        age.decrypt(cts[0], ids, "a.age")
    assert "000000" not in str(first.value)
    for ct in cts[1:]:
        with pytest.raises(VaultpyError, match="not asked again: it was rejected"):
            age.decrypt(ct, ids, "b.age")
    assert len(asked) == 1 and on_path.count()["pin-attempt"] == 1


def test_damaged_or_unavailable_plugin_identity(on_path, pkey, tmp_path, monkeypatch):
    ident, recipient = pkey
    line = next(ln for ln in ident.read_text().splitlines() if ln.startswith("AGE-PLUGIN"))
    bad = tmp_path / "bad.txt"
    bad.write_text(line[:-3] + ("QQQ" if not line.endswith("QQQ") else "PPP") + "\n")
    with pytest.raises(VaultpyError, match="line 1: damaged AGE-PLUGIN") as exc:
        age.load_identity_file(bad)
    assert line[20:40] not in str(exc.value)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(VaultpyError, match="needs age-plugin-vptest, which is not on PATH"):
        age.load_identity_file(ident)
    with pytest.raises(VaultpyError, match=r"age-plugin-vptest.*cannot encrypt"):
        age.encrypt(b"x", [recipient])


def test_plugin_recipients_only_for_masters(pkey):
    _, recipient = pkey
    with pytest.raises(ValueError, match="only be a master recipient"):
        age.normalize_recipient(recipient)
    with pytest.raises(ValueError, match="bad checksum"):
        age.normalize_recipient(recipient[:-1] + ("q" if recipient[-1] != "q" else "p"),
                                allow_plugin=True)
    assert age.plugin_name(recipient) == "vptest"
    assert age.plugin_name(age.generate_x25519()[1]) is None


# --------------------------------------------------------------------------- the CLI


class PluginRepo:
    """HOSTS hosts x SECRETS secrets whose master recipient is the plugin key; built
    once per module, the cache emptied for each test."""

    def __init__(self, base: Path, plugin: Plugin, pkey: tuple[Path, str]) -> None:
        self.plugin = plugin
        self.ident, self.recipient = pkey
        root = base / "repo"
        (root / "keys").mkdir(parents=True)
        (root / "secrets").mkdir()
        self.repo = Repo(root, self.ident, self.recipient)
        for i in range(HOSTS):
            key, pub = ssh_keygen(root / "keys", f"host{i}", comment=f"root@host{i}")
            self.repo.hosts[f"host{i}"] = Host(f"host{i}", key, pub)
        self.write_hosts([self.recipient])
        self.repo.env = {**plugin.env, "HOME": str(root / "home")}
        plugin.reset()
        for sid, plaintext in PLAINTEXTS.items():
            self.repo.ok("encrypt", sid, input=plaintext)       # recipient-v1
        self.wraps = [d for _, e, d in plugin.events() if e == "wrap"]
        assert plugin.starts("recipient-v1") == SECRETS and len(set(self.wraps)) == SECRETS

    def write_hosts(self, recipients: list[str]) -> None:
        from conftest import hosts_toml

        self.repo.write_hosts(hosts_toml(recipients, list(PLAINTEXTS),
                                         {h.name: (h.pubkey, list(PLAINTEXTS))
                                          for h in self.repo.hosts.values()}))

    def fresh(self, **env: str) -> Repo:
        if self.repo.cache.exists():
            shutil.rmtree(self.repo.cache)
        self.repo.env = {**self.plugin.env, "HOME": str(self.repo.root / "home"),
                         "VAULTPY_IDENTITY": str(self.ident), **env}
        self.plugin.reset()
        return self.repo

    def assert_cache_complete(self) -> None:
        files = self.repo.cache_files()
        assert len(files) == HOSTS * SECRETS, sorted(files)
        for name in files:
            host, fname = name.split("/")
            assert age_decrypt(self.repo.cache / name, self.repo.hosts[host].key) == \
                PLAINTEXTS[fname.split(".")[0]]

    def assert_each_master_unwrapped_once(self) -> None:
        unwrapped = [d for _, e, d in self.plugin.events() if e == "file-key"]
        assert sorted(unwrapped) == sorted(self.wraps), (unwrapped, self.wraps)


@pytest.fixture(scope="module")
def prepo(plugin, pkey, tmp_path_factory) -> PluginRepo:
    return PluginRepo(tmp_path_factory.mktemp("plugin-repo"), plugin, pkey)


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_renc_asks_for_the_pin_once_on_a_terminal(prepo, jobs):
    repo = prepo.fresh()
    run = run_in_pty(vaultpy_argv("renc", "-j", jobs), [(PIN_PROMPT, PIN)],
                     env=tty_env(repo), cwd=repo.root)
    assert run.returncode == 0, run.output.decode(errors="replace")
    assert b"Traceback" not in run.output and PIN.encode() not in run.output
    assert len(run.prompts) == 1, run.prompts              # the user: asked once
    prepo.assert_cache_complete()
    # the plugin asks again in every process it is started in: answered from the cache
    counts = prepo.plugin.count()
    assert counts["request-secret"] == prepo.plugin.starts("identity-v1") >= SECRETS


@pytest.mark.parametrize("first_run", [True, False], ids=["first-run", "later-run"])
def test_renc_decrypts_each_master_exactly_once(prepo, tmp_path, first_run):
    """3 hosts x 4 secrets: one plugin start, one PIN attempt, one unwrap per master
    (a touch per decryption is all a hardware key with touch policy "always" costs)."""
    repo = prepo.fresh()
    pinfile = tmp_path / "pin"
    pinfile.write_text(PIN + "\n")
    env = {"VAULTPY_PASSPHRASE_FILE": str(pinfile)}
    if not first_run:
        repo.ok("renc", env=env)
        for sid, plaintext in PLAINTEXTS.items():           # every master changes
            repo.ok("encrypt", sid, input=plaintext + b"v2\n", env=env)
        prepo.wraps = [d for _, e, d in prepo.plugin.events() if e == "wrap"]
        prepo.plugin.reset()
    proc = no_tty(repo, "renc", "-j", "4", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(repo.cache_files()) == HOSTS * SECRETS
    counts = prepo.plugin.count()
    assert (prepo.plugin.starts("identity-v1"), counts["pin-attempt"], counts["file-key"]) \
        == (SECRETS, SECRETS, SECRETS), prepo.plugin.events()
    prepo.assert_each_master_unwrapped_once()
    if not first_run:                                       # back to the module's masters
        for sid, plaintext in PLAINTEXTS.items():
            repo.ok("encrypt", sid, input=plaintext, env=env)
        prepo.wraps = [d for _, e, d in prepo.plugin.events() if e == "wrap"]


def test_renc_pin_from_passphrase_fd_without_a_terminal(prepo):
    repo = prepo.fresh()
    r, w = os.pipe()
    try:
        os.write(w, f"{PIN}\nNOT-READ\n".encode())
        os.close(w)
        proc = no_tty(repo, "--passphrase-fd", str(r), "renc", "-j", "4", pass_fds=[r])
        assert proc.returncode == 0, proc.stderr.decode()
        assert os.read(r, 100) == b"NOT-READ\n"            # exactly one line read
    finally:
        os.close(r)
    prepo.assert_cache_complete()


def test_renc_pin_from_passphrase_file(prepo, tmp_path):
    pwfile = tmp_path / "pin"
    pwfile.write_text(PIN + "\n")
    repo = prepo.fresh(VAULTPY_PASSPHRASE_FILE=str(pwfile))
    proc = no_tty(repo, "renc")
    assert proc.returncode == 0, proc.stderr.decode()
    prepo.assert_cache_complete()


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_renc_wrong_pin_is_tried_once(prepo, jobs):
    """A wrong PIN: one prompt, one attempt on the "hardware", a clean error per master,
    nothing written."""
    repo = prepo.fresh()
    run = run_in_pty(vaultpy_argv("renc", "-j", jobs), [(PIN_PROMPT, "111111")],
                     env=tty_env(repo), cwd=repo.root)
    out = run.output.decode(errors="replace")
    assert run.returncode == 1, out
    assert "Traceback" not in out and "111111" not in out
    assert len(run.prompts) == 1
    assert prepo.plugin.count()["pin-attempt"] == 1
    assert "wrong PIN for vptest key" in out
    assert out.count("not asked again: it was rejected earlier in this run") == SECRETS - 1
    assert repo.cache_files() == {}


def test_renc_without_terminal_or_passphrase_source(prepo):
    """A first run: every master fails with a problem that names the PIN's missing
    source, not the master.  Those masters still do not decrypt, and a first run that
    meets one creates nothing, not even the lock file."""
    repo = prepo.fresh()
    proc = no_tty(repo, "renc")
    assert proc.returncode == 1
    assert_one_clean_error(proc, "VAULTPY_PASSPHRASE_FILE", "no terminal")
    assert prepo.plugin.count()["pin-attempt"] == 0 and repo.cache_files() == {}
    assert not repo.cache.exists()


def test_touch_confirmation_asked_once(prepo):
    """VPTEST_TOUCH=confirm: the plugin asks for a confirmation per file, the user once."""
    repo = prepo.fresh(VPTEST_TOUCH="confirm")
    answers = [(r"Touch your vptest key \w+, then confirm \[Touched/Skip[^\]]*\] ", "y"),
               (PIN_PROMPT, PIN)]
    run = run_in_pty(vaultpy_argv("renc", "-j", "4"), answers, env=tty_env(repo),
                     cwd=repo.root)
    assert run.returncode == 0, run.output.decode(errors="replace")
    assert run.count("Touch") == 1 and run.count("Enter PIN") == 1, run.prompts
    assert prepo.plugin.count()["confirm"] == prepo.plugin.starts("identity-v1") >= SECRETS
    prepo.assert_cache_complete()


def test_touch_message_shown_once(prepo):
    repo = prepo.fresh(VPTEST_TOUCH="msg")
    run = run_in_pty(vaultpy_argv("renc", "-j", "4"), [(PIN_PROMPT, PIN)],
                     env=tty_env(repo), cwd=repo.root)
    assert run.returncode == 0, run.output.decode(errors="replace")
    assert run.output.count(b"age-plugin-vptest: Touch your vptest key") == 1
    assert prepo.plugin.count()["msg"] == prepo.plugin.starts("identity-v1") >= SECRETS


def test_backup_key_first_among_master_recipients(prepo, tmp_path):
    """Master recipients [x25519 backup, plugin]: the plugin stanza comes second, so
    the plugin starts twice per master (measured); still one prompt."""
    _, backup = age_keygen(tmp_path, "backup.txt")
    prepo.write_hosts([backup, prepo.recipient])
    try:
        repo = prepo.fresh()
        for sid, plaintext in PLAINTEXTS.items():
            repo.ok("encrypt", sid, input=plaintext)
        prepo.plugin.reset()
        run = run_in_pty(vaultpy_argv("renc", "-j", "4"), [(PIN_PROMPT, PIN)],
                         env=tty_env(repo), cwd=repo.root)
        assert run.returncode == 0, run.output.decode(errors="replace")
        assert len(run.prompts) == 1
        assert prepo.plugin.starts("identity-v1") == 2 * SECRETS
        assert prepo.plugin.count()["request-secret"] == SECRETS
    finally:
        prepo.write_hosts([prepo.recipient])
        prepo.plugin.reset()
        for sid, plaintext in PLAINTEXTS.items():
            repo.ok("encrypt", sid, input=plaintext)
        prepo.wraps = [d for _, e, d in prepo.plugin.events() if e == "wrap"]


def test_hosts_cannot_use_plugin_recipients(prepo, tmp_path):
    from conftest import hosts_toml

    repo = prepo.fresh()
    saved = (repo.root / "hosts.toml").read_text()
    try:
        repo.write_hosts(hosts_toml([prepo.recipient], ["s0"],
                                    {"web": (prepo.recipient, ["s0"])}))
        proc = repo.run("renc")
        assert_one_clean_error(proc, "hosts.web.pubkey", "only be a master recipient")
    finally:
        repo.write_hosts(saved)


def test_plugin_missing_from_path(prepo):
    repo = prepo.fresh()
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"}
    proc = repo.run("decrypt", "s0", env=env)
    assert_one_clean_error(proc, "yubi.txt", "needs age-plugin-vptest, which is not on PATH")
    before = (repo.root / "secrets" / "s0.age").read_bytes()
    proc = repo.run("encrypt", "s0", input=b"x", env=env)
    assert_one_clean_error(proc, "age-plugin-vptest", "cannot encrypt")
    assert (repo.root / "secrets" / "s0.age").read_bytes() == before


def test_a_rotation_to_a_plugin_not_installed_starts_nothing(make_repo, plugin, pkey,
                                                              tmp_path):
    """A backup recipient whose plugin is not on PATH failed the rotation after its
    journal existed, and every master write then waited on that journal: it is found
    out before anything is written."""
    from conftest import hosts_toml

    from vaultpy.recovery import JOURNAL

    _ident, backup = pkey
    repo = make_repo(hosts=1, secrets={"a": b"alpha"}, encrypt=False)
    repo.write_hosts(hosts_toml([repo.recipient, backup], ["a"],
                                {h.name: (h.pubkey, ["a"]) for h in repo.hosts.values()}))
    repo.ok("encrypt", "a", input=b"alpha", env=plugin.env)
    before = repo.snapshot()
    new = tmp_path / "new.txt"
    no_plugin = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"}
    proc = repo.run("rekey", "--rotate-master", "--new-identity", str(new), env=no_plugin)
    assert_one_clean_error(proc, "age-plugin-vptest", "cannot encrypt", "install")
    assert not (repo.root / JOURNAL).exists() and not new.exists()
    assert repo.snapshot() == before
    repo.ok("encrypt", "a", input=b"alpha-2", env=plugin.env)     # no journal in the way
    repo.ok("rekey", "--rotate-master", "--new-identity", str(new), env=plugin.env)
    assert age_decrypt(repo.root / "secrets" / "a.age", new) == b"alpha-2"


def test_a_plugin_backup_listed_without_rekey_fails_check(make_repo, plugin, pkey) -> None:
    """A plugin key's stanza names no recipient, so the header check skipped plugin
    keys altogether: a YubiKey backup added to [vaultpy] recipients and never rekeyed
    to passed `check` (a review).  Each plugin key listed needs a stanza."""
    from conftest import hosts_toml

    _ident, backup = pkey
    repo = make_repo(hosts=1, secrets={"a": b"alpha"})
    repo.ok("renc")
    h = repo.hosts["host0"]
    repo.write_hosts(hosts_toml([repo.recipient, backup], ["a"], {h.name: (h.pubkey, ["a"])}))
    proc = repo.run("check", env=plugin.env)
    assert proc.returncode == 1
    assert "secrets/a.age: secrets.a: has 0 plugin stanza(s) but [vaultpy] recipients list " \
           "1 plugin key(s); run vaultpy rekey" in proc.stdout.decode(), proc.stdout.decode()
    repo.ok("rekey", env=plugin.env)
    repo.ok("renc", env=plugin.env)
    repo.ok("check", env=plugin.env)


# --------------------------------------------------------------------------- the age CLI


AGE_PIN_PROMPT = r"Enter PIN for vptest key \w+ "


def test_age_cli_decrypts_what_vaultpy_wrote(prepo):
    """age finds age-plugin-vptest on PATH and runs the same identity-v1 exchange."""
    repo = prepo.fresh()
    for sid, plaintext in PLAINTEXTS.items():
        run = run_in_pty([need("age"), "-d", "-i", str(prepo.ident),
                          str(repo.root / "secrets" / f"{sid}.age")], [(AGE_PIN_PROMPT, PIN)],
                         env={**os.environ, **prepo.plugin.env}, cwd=repo.root)
        assert run.returncode == 0, run.output
        assert plaintext.strip() in run.output
    assert prepo.plugin.starts("identity-v1") == SECRETS


def test_vaultpy_decrypts_what_age_wrote(on_path, pkey, tmp_path):
    ident, recipient = pkey
    out = tmp_path / "by-age.age"
    subprocess.run([need("age"), "-e", "-r", recipient, "-o", str(out)],
                   input=b"written by age", check=True, capture_output=True)
    assert on_path.starts("recipient-v1") == 1
    asked, ask = counting_ask()
    ids = age.load_identity_file(ident, ask)
    assert age.decrypt(out.read_bytes(), ids, "by-age.age") == b"written by age"
    assert len(asked) == 1 and on_path.starts("identity-v1") == 1


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_ctrl_c_at_the_pin_prompt_of_a_later_run_ends_it(prepo, jobs):
    """A later run (the lock exists) decrypts in its workers, which finish the job
    they hold on a Ctrl-C: a PIN prompt they wait on must still end at once, as the
    first run's does."""
    repo = prepo.fresh()
    first = run_in_pty(vaultpy_argv("renc"), [(PIN_PROMPT, PIN)], env=tty_env(repo),
                       cwd=repo.root)
    assert first.returncode == 0, first.output.decode(errors="replace")
    host = sorted(repo.hosts)[0]
    shutil.rmtree(repo.cache / host)                   # work for a later run
    prepo.plugin.reset()
    run = run_in_pty(vaultpy_argv("renc", "-j", jobs), [(PIN_PROMPT, "\x03")],
                     env=tty_env(repo), cwd=repo.root, timeout=60)
    assert len(run.prompts) == 1, run.prompts
    assert run.returncode == 130, run.output.decode(errors="replace")
    assert b"Traceback" not in run.output and b"interrupted" in run.output
    assert not any(fsutil.is_tmp(p.name) for p in repo.cache.rglob("*"))


_KILLED_ASKING = r"""
import os, signal, sys, time
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[1])
from vaultpy import age
from vaultpy._internal import forkpool

answers = age._Answers()
asking = sys.argv[2]

def killed():           # the OOM killer, kill -9, while it asks the user
    open(asking, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)

def work(i):
    if i == 0:
        return answers.answer("confirm", killed, secret=False)
    while not os.path.exists(asking):
        time.sleep(0.01)
    return answers.answer("confirm", lambda: "asked again", secret=False)

got = {}
forkpool.run(2, 2, work, got.__setitem__)
print(got[1], got[0])
"""


def test_a_worker_killed_while_it_asks_leaves_the_others_asking(tmp_path):
    """renc's pool lets the other workers go on once one died: they must not wait for
    good on the answers' lock the dead one held (ProcessPoolExecutor terminated them)."""
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_ASKING, root,
                             str(tmp_path / "asking")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("the other worker waited for the dead one's lock")
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "asked again Failed(reason='its worker was killed by SIGKILL')\n"
