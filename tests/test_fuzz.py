"""Fuzzing (issue 7, part 4): the parsers of untrusted input never crash and never hang.

Four parsers read what a user, a git checkout or a disk hands vaultpy:

* :func:`vaultpy.model.parse`      hosts.toml text     → Config, or VaultpyError;
* :mod:`vaultpy.templates`         template text       → segments, or TemplateError
                                   (``render``: KeyError for a value it was not given);
* :func:`vaultpy.profile.parse`    a decoded JSON value → Profile, or VaultpyError;
* :func:`vaultpy._internal.ageformat.parse`  bytes     → Header, or FormatError.

Any other exception is a bug (it would be exit 70, an "internal error", in the CLI).
Every example runs under a hypothesis deadline and a hard per-example alarm, so a
hang (a regular expression gone exponential, a loop that never ends) fails the test
instead of stalling CI.

The fast tests run a few hundred examples each; ``test_fuzz_time_boxed`` (slow, run by
CI) cycles through all targets with fresh random seeds for ``VAULTPY_FUZZ_SECONDS``
(default 60) seconds and prints how many examples it ran.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
import tomli_w
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from vaultpy import model, profile, templates
from vaultpy._internal import ageformat
from vaultpy.errors import VaultpyError

# The published demo keys (demo/): real keys, so that documents get past key validation.
MASTER = "age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55qaz6zqc"
BACKUP = "age1wx6v8x77dkk02v3d00vethycfzl9erqxa72tcy0fp7sekd70sdlq5sut35"
WEB1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqkayYyM7xri8xE+HoH3wJ87FEpSjrvj0VVmRJql5xs root@web1"
DB1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMw6F/cMvNsLiZwOqBF1x0Rc1CnOOKPVif5C4eHIYpA9"
HOSTS_PATH = Path("/nonexistent-vaultpy-fuzz/repo/hosts.toml")   # parse() never writes

EXAMPLE_SECONDS = 10.0      # the hard per-example limit (a hang, not a slow machine)
FAST = settings(max_examples=200, deadline=dt.timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


class Hang(Exception):
    """An example ran for longer than EXAMPLE_SECONDS."""


@contextlib.contextmanager
def time_limit(seconds: float = EXAMPLE_SECONDS) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread if the block runs longer than ``seconds``."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"example still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# =========================================================================== hosts.toml

ID_LIKE = st.one_of(
    st.sampled_from(["db_password", "api_token", "web1", "db1", "a", "app.env", "x-1.b_2"]),
    st.from_regex(templates.ID_PATTERN, fullmatch=True).map(lambda s: s[:140]),
    st.sampled_from(["", "../x", "/", ".hidden", "a/b", "a\x00b", "a\nb", "web 1", "h" * 129,
                     "ünïcode", "\x1b[2J", "-x", "a\"b", "a\\b"]),
    st.text(max_size=12),
)
INTERESTING = st.sampled_from([
    "0400", "440", "0o440", "4755", "0999", "rw-r--r--", "", " ", "root", "app", "1000",
    "4294967295", "-1", "app:app", "nginx.service", "app service", "../x.service",
    "/etc/app/key", "/", "etc/x", "/etc/../x", "/etc/a\x00", "//x", "/x/", "~/x", "~",
    "{{ secrets.db_password }}", "{{ secrets.", "{{{{", "{{ secrets.nosuch }}",
    "secrets/cache", ".", "..", "secrets/db_password.age", "secret/app#password",
    "a/b#c@2", "#", "http://vault:8200", "token", "approle", "alnum:32",
    MASTER, BACKUP, WEB1, DB1, MASTER.upper(), MASTER[:-1] + "q", WEB1[:40],
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB", "age1" + "q" * 58, "AGE-SECRET-KEY-1X",
])
TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 8, 256, 400, 420, 0o400, 0o777, 0o4755, 2**32, -5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    INTERESTING,
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.dates(),
    st.times(),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(ID_LIKE, st.text(max_size=8)), inner,
                                            max_size=4)),
    max_leaves=8,
)


def _often(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any],
           one_in: int = 6) -> st.SearchStrategy[Any]:
    """``good`` most of the time, ``bad`` once in ``one_in`` draws: each field is usually
    plausible, so that whole documents get past the first problems to the deep checks."""
    return st.integers(0, one_in - 1).flatmap(lambda i: bad if i == 0 else good)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the plausible value, sometimes anything at all (type confusion)."""
    return _often(strategy, TOML_VALUES, 8)


def _table(required: dict[str, st.SearchStrategy[Any]],
           optional: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    junk = _often(st.just({}), st.dictionaries(
        st.sampled_from(["onwer", "nmae", "modee", "contents", "extra", "secret", "pubkeys",
                         "vault", "rotate_days"]), TOML_VALUES, max_size=1), 20)
    base = st.fixed_dictionaries(required, optional=optional)
    return st.tuples(base, junk).map(lambda t: {**t[1], **t[0]})


def _field(good: list[Any]) -> st.SearchStrategy[Any]:
    return _maybe(_often(st.sampled_from(good), INTERESTING))


POOL = ["db_password", "api_token", "a", "b", "app.env", "x-1.b_2"]
IDS = _often(st.sampled_from(POOL), ID_LIKE, 10)
OUTPUT = {
    "owner": _field(["root", "app", "nginx", "1000", 0, 1000, "_svc$"]),
    "group": _field(["root", "app", "2000", 2000]),
    "mode": _field(["0400", "0440", "0600", "440", "0777", 0, 7]),   # tomli_w writes decimal
    "path": _field(["/etc/app/key", "/var/lib/a/b", "/etc/nginx/tls/web1.key", "/x"]),
    "restart_units": _maybe(st.lists(_often(st.sampled_from(["a.service", "b@1.service"]),
                                            INTERESTING), max_size=3)),
    "reload_units": _maybe(st.lists(_often(st.sampled_from(["nginx.service", "x.socket"]),
                                           INTERESTING), max_size=3)),
    "early": _maybe(st.booleans()),
}
TEMPLATE_TEXT = st.one_of(
    st.text(alphabet="{} secrets.ab_-\n", max_size=60),
    st.lists(st.sampled_from(["{", "}", "{{", "}}", "{{{{", " ", "secrets.", "db_password",
                              "api_token", "nosuch", "{{ secrets.", " }}", "x\n", "a/b",
                              "{{ secrets.db_password }}", "{{secrets.a}}", "{{ secrets.b}}",
                              "{{  secrets.api_token  }}", "{{{ secrets.a }}}", "A=", "\n"]),
             max_size=16).map("".join),
    st.text(max_size=40),
)
DEPLOYED = _table({}, {"name": _maybe(IDS), **OUTPUT})
TEMPLATE = _table({"content": _maybe(TEMPLATE_TEXT)}, {"trim": _maybe(st.booleans()),
                                                       **OUTPUT})
HOST = _table(
    {"pubkey": _maybe(_often(st.sampled_from([WEB1, DB1, MASTER, [WEB1, DB1]]),
                             st.one_of(INTERESTING, st.lists(st.sampled_from(
                                 [WEB1, DB1, WEB1, "x"]), max_size=3))))},
    {"secrets": _maybe(st.one_of(st.lists(IDS, max_size=4),
                                 st.dictionaries(IDS, _maybe(DEPLOYED), max_size=3))),
     "templates": _maybe(st.dictionaries(IDS, _maybe(TEMPLATE), max_size=3))},
)
SECRET = _table({}, {"file": _field(["secrets/x.age", "other/a.age", "/abs/a.age"]),
                     "vault": _field(["secret/app#password", "kv/a/b#c@2"]),
                     "generate": _field(["alnum:32", "hex:16", "passphrase:6", "x25519"]),
                     "rotate_days": _maybe(st.integers(-1, 40000))})
SETTINGS = _table(
    {"recipients": _maybe(_often(st.sampled_from([[MASTER], [MASTER, BACKUP], [WEB1]]),
                                 st.lists(st.sampled_from([MASTER, BACKUP, WEB1, "x"]),
                                          max_size=3)))},
    {"identity": _field(["keys/master.txt", "~/.config/vaultpy/master.txt"]),
     "secrets_dir": _field(["secrets", "s", "/abs/secrets"]),
     "cache_dir": _field(["secrets/cache", "cache", "/abs/cache"]),
     "vault": _often(st.just({"addr": "http://127.0.0.1:8200"}), st.dictionaries(
         st.sampled_from(["addr", "auth", "role_id", "namespace", "secret_id_file",
                          "ca_cert", "x"]), INTERESTING, max_size=3), 3)},
)
DOCUMENTS = _table(
    {"vaultpy": _maybe(SETTINGS),
     "hosts": _often(st.dictionaries(IDS, _maybe(HOST), min_size=1, max_size=3),
                     TOML_VALUES, 10)},
    {"secrets": _maybe(_often(st.builds(lambda: {key: {} for key in POOL}),
                              st.dictionaries(IDS, _maybe(SECRET), max_size=4), 2))},
)

# TOML-ish text: lines of real syntax, broken syntax and noise, in any order.
TOML_LINES = _often(
    st.sampled_from([
        "[vaultpy]", f'recipients = ["{MASTER}"]', "[secrets.db_password]", "[secrets.a]",
        "[hosts.web1]", f'pubkey = "{WEB1}"', 'secrets = ["db_password"]',
        "[hosts.web1.secrets.db_password]", 'mode = "0440"', "mode = 400", "mode = 0o400",
        'owner = "app"', 'path = "/etc/app/key"', 'restart_units = ["a.service"]',
        '[hosts.web1.templates."app.env"]', 'content = "A={{ secrets.db_password }}"',
        'content = """\nA={{ secrets.a\n"""', "trim = true", "early = yes", "[[hosts]]",
        "[hosts", 'name = "x"', 'name = "x"', "x = 1979-05-27T07:32:00Z", "[secrets.\"../x\"]",
        '[hosts."a\\u0000b"]', "a.b.c = 1", "= 1", '"" = 2', "[vaultpy.vault]",
        'cache_dir = "."', 'file = "secrets/cache/x.age"', "\\", "'''", '"""', "#",
    ]),
    st.one_of(st.text(alphabet='[]{}"=.,# \tabcdehkmnoprstuvy0134\\\n', max_size=30),
              st.text(max_size=20)),
    4,
)
TOML_TEXT = st.lists(TOML_LINES, max_size=25).map("\n".join)


def prop_hosts_toml_text(text: str) -> None:
    try:
        cfg = model.parse(text, HOSTS_PATH)
    except VaultpyError as exc:
        assert exc.problems and all(p.file for p in exc.problems)
        for p in exc.problems:
            assert "\n" not in str(p), str(p)          # one line each, always
        return
    _check_config(cfg)


def prop_hosts_toml_document(doc: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):       # a value TOML cannot hold: not our input
        return
    prop_hosts_toml_text(text)


def _check_config(cfg: model.Config) -> None:
    """What a Config that passed validation promises its users; above all, every
    host's profile passes the (equally strict) profile loader of activation: what
    renc accepts also boots."""
    assert cfg.recipients
    for sid in cfg.secrets:
        assert model.ID_RE.fullmatch(sid) and len(sid) <= model.ID_MAX
    for name, host in cfg.hosts.items():
        assert model.ID_RE.fullmatch(name) and len(name) <= model.ID_MAX
        assert host.recipients
        names = [d.name for d in host.deployments] + [t.name for t in host.templates]
        assert len(names) == len(set(names))
        for sid in host.needed:
            assert sid in cfg.secrets
        for out in [d.out for d in host.deployments] + [t.out for t in host.templates]:
            assert re.fullmatch(r"0[0-7]{3}", out.mode), out.mode
            assert out.path is None or (out.path.startswith("/") and ".." not in out.path
                                        and "\0" not in out.path)
        if model.no_identity_for_age_key(cfg, name) is not None:
            # renc and check warn of it; profile refuses it: it would not boot
            with pytest.raises(VaultpyError, match="no identities say where"):
                _profile_without_masters(cfg, name)
            continue
        data = json.loads(profile.dumps(_profile_without_masters(cfg, name)))
        prof = profile.parse(data, "profile.json", HOSTS_PATH.parent)
        assert prof.host == name


def _profile_without_masters(cfg: model.Config, host: str) -> dict[str, Any]:
    """profile.build with made-up master hashes (there are no master files here)."""
    from vaultpy import cache

    real = cache.master_hashes

    def fake(cfg: model.Config, ids: Any) -> tuple[dict[str, Any], list[Any]]:
        return {sid: cache.Master("0" * 64, None) for sid in ids}, []

    cache.master_hashes = fake  # type: ignore[assignment]
    try:
        return profile.build(cfg, host)
    finally:
        cache.master_hashes = real


@FAST
@given(TOML_TEXT)
def test_hosts_toml_text(text: str) -> None:
    with time_limit():
        prop_hosts_toml_text(text)


@FAST
@given(DOCUMENTS)
def test_hosts_toml_documents(doc: dict[str, Any]) -> None:
    with time_limit():
        prop_hosts_toml_document(doc)


def test_hosts_toml_documents_reach_a_valid_config() -> None:
    """The document strategy is not all noise: a plain valid document parses."""
    doc = {"vaultpy": {"recipients": [MASTER]}, "secrets": {"a": {}},
           "hosts": {"web1": {"pubkey": WEB1, "secrets": {"a": {"mode": "0440"}},
                              "templates": {"t": {"content": "{{ secrets.a }}"}}}}}
    cfg = model.parse(tomli_w.dumps(doc), HOSTS_PATH)
    _check_config(cfg)
    assert cfg.hosts["web1"].needed == ("a",)


# =========================================================================== templates

def prop_template(args: tuple[str, dict[str, bytes], bool]) -> None:
    text, values, trim = args
    try:
        segments = templates.parse(text)
    except templates.TemplateError as exc:
        assert exc.line >= 1 and exc.column >= 1
        with pytest.raises(templates.TemplateError):
            templates.render(text, values, trim)
        return
    refs = templates.references(text)
    assert refs == list(dict.fromkeys(s.id for s in segments if isinstance(s, templates.Ref)))
    assert all(s != "" for s in segments)
    # Re-writing the segments canonically parses back to the same segments.
    canonical = "".join(s.replace("{{", "{{{{") if isinstance(s, str)
                        else "{{ secrets." + s.id + " }}" for s in segments)
    merged: list[templates.Segment] = []
    for s in segments:           # adjacent literals (split at "{") merge on re-parse
        if merged and isinstance(s, str) and isinstance(merged[-1], str):
            merged[-1] += s
        else:
            merged.append(s)
    assert templates.parse(canonical) == merged
    try:
        out = templates.render(text, values, trim)
    except KeyError as exc:
        assert exc.args[0] in refs and exc.args[0] not in values
        return
    # Rendering is a single pass: placeholder syntax inside a value stays literal.
    literal = "".join(s for s in segments if isinstance(s, str)).encode()
    inserted = b"".join((values[s.id].strip() if trim else values[s.id])
                        for s in segments if isinstance(s, templates.Ref))
    assert len(out) == len(literal) + len(inserted)


TEMPLATE_ARGS = st.tuples(
    TEMPLATE_TEXT,
    st.dictionaries(st.sampled_from(["db_password", "api_token", "a", "b", "ab"]),
                    st.one_of(st.binary(max_size=20),
                              st.just(b"{{ secrets.a }}"), st.just(b"  x \n")), max_size=4),
    st.booleans(),
)


@FAST
@given(TEMPLATE_ARGS)
def test_templates(args: tuple[str, dict[str, bytes], bool]) -> None:
    with time_limit():
        prop_template(args)


def test_template_parse_is_linear_on_adversarial_input() -> None:
    """Many unclosed braces and near-placeholders: parse stays fast (no backtracking)."""
    for text in ("{" * 200_000, "{{ " * 100_000, "{{ secrets." + "a" * 200_000,
                 "{{ secrets.a" + " " * 200_000, "{{{ secrets.a }}" * 20_000):
        start = time.monotonic()
        with time_limit(), contextlib.suppress(templates.TemplateError):
            templates.parse(text)
        assert time.monotonic() - start < 5, text[:30]


# =========================================================================== profiles

VALID_PROFILE: dict[str, Any] = {
    "version": 1, "host": "web1",
    "settings": {"identities": ["/etc/ssh/ssh_host_ed25519_key"], "dir": "/run/vaultpy",
                 "early_dir": "/run/vaultpy-early", "store": "/run/vaultpy.d", "keep": 3},
    "secrets": [
        {"id": "api_token", "file": "secrets/cache/web1/api_token.0.age", "install": True,
         "name": "api_token", "owner": "app", "group": "app", "mode": "0440", "path": None,
         "restart_units": ["app.service"], "reload_units": [], "early": False},
        {"id": "db_password", "file": "secrets/cache/web1/db_password.0.age",
         "install": False, "name": "db_password", "owner": "root", "group": "root",
         "mode": "0400", "path": "/etc/app/db", "restart_units": [], "reload_units": [],
         "early": True},
    ],
    "templates": [
        {"name": "app.env", "content": "A={{ secrets.api_token }}\nB={{ secrets.db_password }}",
         "trim": True, "owner": "1000", "group": "root", "mode": "0400", "path": None,
         "restart_units": [], "reload_units": ["nginx.service"], "early": False},
    ],
}
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    INTERESTING.filter(lambda s: isinstance(s, str)),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10,
)


def _slots(doc: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON document."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(
        doc, list) else []
    for key, value in items:
        out.append((doc, key))
        _slots(value, out)
    return out


@st.composite
def mutated_profiles(draw: st.DrawFn) -> Any:
    """The valid profile with one to four subtrees replaced, deleted or added."""
    doc = copy.deepcopy(VALID_PROFILE)
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(doc, [])
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "duplicate"]))
        if action == "replace":
            container[key] = draw(st.one_of(JSON_VALUES, JSON_SCALARS))
        elif action == "delete":
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[draw(st.text(max_size=8))] = draw(JSON_VALUES)
        elif action == "duplicate" and isinstance(container, list):
            container.append(copy.deepcopy(container[key]))
    return doc


PROFILES = st.one_of(mutated_profiles(), mutated_profiles(), JSON_VALUES)


def prop_profile(data: Any) -> None:
    # Through JSON text and back, as profile.load reads it (NaN survives as in Python).
    data = json.loads(json.dumps(data))
    try:
        prof = profile.parse(data, "profile.json", Path("/nonexistent-vaultpy-fuzz"))
    except VaultpyError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file == "profile.json" and "\n" not in str(p)
        return
    items = prof.installed(early=False) + prof.installed(early=True)
    names = [i.name for i in items]
    assert len(names) == len(set(names))
    for item in [*prof.secrets, *prof.templates]:
        assert model.ID_RE.fullmatch(item.name)
        assert re.fullmatch(r"0[0-7]{3}", item.out.mode)
        assert item.out.path is None or (item.out.path.startswith("/")
                                          and "\0" not in item.out.path)
        assert item.file is None or "\0" not in str(item.file)
        for who in (item.out.owner, item.out.group):    # chown(2) takes -1 as "unchanged"
            assert not who.isdigit() or (who.isascii() and int(who) < 2**32 - 1), who
    paths = [i.out.path for i in items if i.out.path]
    assert len(paths) == len(set(paths))
    s = prof.settings
    for path in paths:          # never inside (or above) activation's own directories
        for d in (s.dir, s.early_dir, s.store, s.store + ".lock"):
            assert path != d and not path.startswith(d + "/") and not d.startswith(path + "/")
        for d in (s.dir, s.early_dir):      # nor a live symlink's temporary name
            head, _, base = d.rpartition("/")
            assert not path.startswith(f"{head}/.{base}.vaultpy-tmp-")
    known = {s.id for s in prof.secrets}
    for t in prof.templates:
        assert set(templates.references(t.content or "")) <= known
    assert prof.settings.keep >= 1


@FAST
@given(PROFILES)
def test_profiles(data: Any) -> None:
    with time_limit():
        prop_profile(data)


def test_valid_profile_parses() -> None:
    prop_profile(VALID_PROFILE)
    prof = profile.parse(VALID_PROFILE, "profile.json", Path("/x"))
    assert [i.name for i in prof.installed(early=False)] == ["api_token", "app.env"]


def _with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(VALID_PROFILE)
    change(data)
    return data


def _set(kind: str, i: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[kind][i].update(fields)


@pytest.mark.parametrize("change, field, words", [
    (_set("secrets", 0, path="/run/vaultpy/other"), "secrets[0].path", "/run/vaultpy"),
    (_set("secrets", 0, path="/run/vaultpy"), "secrets[0].path", "dir"),
    (_set("templates", 0, path="/run/vaultpy.d/1/x"), "templates[0].path", "store"),
    (_set("templates", 0, path="/run"), "templates[0].path", "overlaps"),
    (_set("secrets", 0, path="/run/vaultpy.d.lock"), "secrets[0].path", "its lock file"),
    (_set("templates", 0, path="/run/.vaultpy-early.vaultpy-tmp-1"), "templates[0].path",
     "early_dir's temporary symlinks"),
    (lambda d: (d["settings"].update(store="/srv/st"),
                d["secrets"][0].update(path="/srv/st.lock/x")), "secrets[0].path",
     "'/srv/st.lock', where activation keeps its lock file"),
    (lambda d: (d["settings"].update(dir="/srv/live"),
                d["secrets"][0].update(path="/srv/live/x")), "secrets[0].path", "/srv/live"),
    (lambda d: (d["secrets"][0].update(path="/etc/app/key"),
                d["templates"][0].update(path="/etc/app/key")), "templates[0].path",
     "two items use the path '/etc/app/key'"),
    (lambda d: (d["secrets"][0].update(path="/etc/app"),
                d["templates"][0].update(path="/etc/app/conf")), "templates[0].path",
     "path '/etc/app/conf' lies inside '/etc/app', another item's path"),
    (_set("secrets", 0, path="/etc/app/.key.vaultpy-tmp-1"), "secrets[0].path",
     "temporary names"),
    (_set("secrets", 0, owner="4294967295"), "secrets[0].owner", "invalid user"),
    (_set("templates", 0, group="99999999999999999999"), "templates[0].group", "invalid"),
    (_set("templates", 0, owner="\u00b2"), "templates[0].owner", "invalid user"),
    (_set("templates", 0, path="/etc/a\u0000b"), "templates[0].path", "a control character"),
    (_set("secrets", 0, file="\u0000"), "secrets[0].file", "NUL"),
    (lambda d: d["settings"].update(dir="/run/vaultpy.d/live"), "settings.dir",
     "dir and store overlap"),
    (lambda d: d["settings"].update(early_dir="/run/vaultpy.d.lock"), "settings.early_dir",
     "early_dir and lock file overlap"),
    (lambda d: d["settings"].update(dir="/run/x", early_dir="/run/x"), "settings.dir",
     "dir and early_dir overlap"),
])
def test_profile_refuses_what_activation_cannot_do_safely(
        change: Callable[[dict[str, Any]], None], field: str, words: str) -> None:
    """A path onto activation's own directories would write into the live generation;
    two items on one path would lose one silently; (uid_t)-1 means "leave the owner"."""
    with pytest.raises(VaultpyError) as exc:
        profile.parse(_with(change), "profile.json", Path("/x"))
    assert [(p.field, words in p.message) for p in exc.value.problems] == [(field, True)]


def _string_fields(doc: Any, where: str = "") -> Iterator[tuple[str, Callable[[Any], None]]]:
    """(field path, a change putting a lone surrogate into that string) for every string
    value of a JSON document."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(
        doc, list) else []
    for key, value in items:
        at = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key
        if isinstance(value, str):
            yield at, (lambda d, at=at: _put(d, at))
        else:
            yield from _string_fields(value, at)


def _put(doc: Any, at: str) -> None:
    """Insert "\\ud800" (as json.loads decodes the escape) into the string at ``at``."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", at)]
    for key in keys[:-1]:
        doc = doc[key]
    doc[keys[-1]] = doc[keys[-1]][:1] + "\ud800" + doc[keys[-1]][1:]


def test_profile_refuses_every_string_that_is_not_utf8() -> None:
    """A JSON escape like "\\ud800" decodes to a lone surrogate: no file, path or user
    name can hold it, and activation crashed (exit 70) writing it.  Every string field,
    and a key, is refused in one line naming the field."""
    fields = list(_string_fields(VALID_PROFILE))
    assert {"templates[0].content", "secrets[1].path", "secrets[0].name",
            "settings.identities[0]", "secrets[0].restart_units[0]", "templates[0].owner",
            "host", "secrets[0].file"} <= {at for at, _ in fields}
    for at, change in fields:
        data = json.loads(json.dumps(_with(change)))     # through JSON, as load reads it
        with pytest.raises(VaultpyError) as exc:
            profile.parse(data, "profile.json", Path("/x"))
        assert [(p.field, "not valid UTF-8" in p.message) for p in exc.value.problems] == [
            (at, True)], at
        assert "\ud800" not in str(exc.value.problems[0])
    data = _with(lambda d: d["templates"][0].update({"x\ud800\n": 1}))
    with pytest.raises(VaultpyError) as exc:
        profile.parse(data, "profile.json", Path("/x"))
    assert [p.field for p in exc.value.problems] == ['templates[0]["x\\ud800\\n"] (its name)']


def test_profile_takes_the_largest_real_numeric_owner() -> None:
    prof = profile.parse(_with(_set("secrets", 0, owner="4294967294", path="/srv/a/b")),
                         "profile.json", Path("/x"))
    assert prof.secrets[0].out.owner == "4294967294"


# =========================================================================== age files

def _valid_age_files() -> list[bytes]:
    """Real files from pyrage (X25519, ssh-ed25519, both, armored; payloads around the
    64 KiB chunk boundary), plus a scrypt header built by hand (parsing needs no key)."""
    x25519 = pyrage.x25519.Recipient.from_str(MASTER)
    ssh = pyrage.ssh.Recipient.from_str(" ".join(WEB1.split()[:2]))
    files = []
    for size in (0, 1, 100, 65536, 65537):
        files.append(bytes(pyrage.encrypt(b"s" * size, [x25519])))
    files.append(bytes(pyrage.encrypt(b"secret\n", [ssh])))
    files.append(bytes(pyrage.encrypt(b"secret\n", [x25519, ssh])))
    files.append(bytes(pyrage.encrypt(b"armored\n", [x25519, ssh], armored=True)))
    body = files[1].split(b"\n--- ", 1)[1]
    files.append(b"age-encryption.org/v1\n-> scrypt AAAAAAAAAAAAAAAAAAAAAA 18\n"
                 b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n--- " + body)
    return files


AGE_FILES = _valid_age_files()


@st.composite
def mutated_age_files(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(AGE_FILES)))
    header_end = data.find(b"\n---") + 50 if b"\n---" in data else 200
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        # Mostly in the header, where the parsing is; sometimes anywhere.
        limit = min(len(data), header_end) if draw(st.integers(0, 3)) else len(data)
        first = 0 if draw(st.integers(0, 5)) == 0 else min(len(ageformat.VERSION_LINE),
                                                           limit - 1)
        pos = draw(st.integers(first, max(limit - 1, first)))
        op = draw(st.sampled_from(["flip", "set", "truncate", "delete", "insert", "dup_line",
                                   "drop_line", "crlf", "space"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from(b"\n\r -=>+/A0a\x00\xff*"))
        elif op == "truncate":
            del data[pos:]
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 70))]
        elif op == "insert":
            data[pos:pos] = draw(st.one_of(
                st.binary(min_size=1, max_size=8),
                st.sampled_from([b"\n", b"-> ", b"--- ", b"\n-> X25519 A\n", b"=", b"\r\n",
                                 b"-----END AGE ENCRYPTED FILE-----\n", b"A" * 64 + b"\n"])))
        elif op in ("dup_line", "drop_line"):
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == "dup_line":
                lines.insert(i, lines[i])
            else:
                del lines[i]
            data = bytearray(b"\n".join(lines))
        elif op == "crlf":
            data = bytearray(bytes(data).replace(b"\n", b"\r\n", draw(st.integers(1, 3))))
        else:
            data[pos:pos] = b" "
    return bytes(data)


AGE_INPUTS = st.one_of(mutated_age_files(), mutated_age_files(), mutated_age_files(),
                       st.binary(max_size=300),
                       st.sampled_from(AGE_FILES),
                       st.sampled_from([b"  \n" + AGE_FILES[-2] + b"\n\n", AGE_FILES[-2].replace(
                           b"\n", b"\r\n")]))


def prop_age_file(data: bytes) -> None:
    try:
        header = ageformat.parse(data)
    except ageformat.FormatError as exc:
        assert str(exc)
        return
    assert header.stanzas and len(header.mac) == 32
    assert header.payload_size >= ageformat.NONCE + ageformat.TAG
    assert ageformat.parse(data) == header            # deterministic


def test_valid_age_files_parse() -> None:
    for data in AGE_FILES:
        prop_age_file(data)
        ageformat.parse(data)


@FAST
@given(AGE_INPUTS)
def test_age_files(data: bytes) -> None:
    with time_limit():
        prop_age_file(data)


# =========================================================================== extremes

EXTREME_TOML = [
    "x = " + "[" * 50_000 + "]" * 50_000,                     # recursion in tomllib
    "x = " + "{a = " * 20_000 + "1" + "}" * 20_000,
    "x = " + "9" * 5000,                                        # int() digit limit
    '[hosts.a]\nmode = ' + "4" * 5000,
    'x = """\nmode = ' + "9" * 5000 + '\n"""',                  # the decimal-mode scan
    "mode = 400\n" * 20_000,
    f'[vaultpy]\nrecipients = ["{MASTER}"]\n' + "".join(
        f"[secrets.s{i}]\n" for i in range(5000)),
    "[" + "a." * 5000 + "b]",
    'x = "' + "\\u0000" * 10_000 + '"',
]


@pytest.mark.parametrize("text", EXTREME_TOML, ids=lambda t: t[:12])
def test_hosts_toml_extremes(text: str) -> None:
    with time_limit():
        prop_hosts_toml_text(text)


@pytest.mark.parametrize("text", [
    "[" * 50_000 + "]" * 50_000,
    '{"version": ' + "9" * 5000 + "}",
    '{"version": 1, "settings": {"keep": 1' + "0" * 4000 + "}}",
    '{"secrets": [' + ",".join(['{"id": "a"}'] * 20_000) + "]}",
], ids=["deep", "huge-int", "big-keep", "many-items"])
def test_profile_extremes(text: str, tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(text)
    with time_limit(), contextlib.suppress(VaultpyError):
        profile.load(path)


@pytest.mark.parametrize("data", [
    ageformat.VERSION_LINE + b"-> X25519 " + b"A" * 1_000_000 + b"\n",
    ageformat.VERSION_LINE + b"-> a\n" * 200_000 + b"--- " + b"A" * 43 + b"\n" + b"\0" * 32,
    ageformat.VERSION_LINE + b"-> a\n" + b"A" * 64 * 100_000 + b"\n",
    b"-----BEGIN AGE ENCRYPTED FILE-----\n" + b"A" * 64_000_00 + b"\n",
    AGE_FILES[0][:-1] + b"\0" * (64 * 1024 * 40),
], ids=["long-arg", "many-stanzas", "long-body", "armor-one-line", "big-payload"])
def test_age_file_extremes(data: bytes) -> None:
    start = time.monotonic()
    with time_limit():
        prop_age_file(data)
    assert time.monotonic() - start < 5


# =========================================================================== time-boxed run

TARGETS: list[tuple[str, st.SearchStrategy[Any], Callable[[Any], None]]] = [
    ("hosts.toml text", TOML_TEXT, prop_hosts_toml_text),
    ("hosts.toml documents", DOCUMENTS, prop_hosts_toml_document),
    ("templates", TEMPLATE_ARGS, prop_template),
    ("profiles", PROFILES, prop_profile),
    ("age files", AGE_INPUTS, prop_age_file),
]


def _counted(name: str, prop: Callable[[Any], None], counts: dict[str, int],
             stop: float) -> Callable[[Any], None]:
    def counted(value: Any) -> None:
        if time.monotonic() >= stop:        # out of time: let hypothesis finish quickly
            return
        counts[name] += 1
        with time_limit():
            prop(value)
    return counted


@pytest.mark.slow
def test_fuzz_time_boxed(capsys: pytest.CaptureFixture[str]) -> None:
    """Round-robin over every target with fresh seeds until the time budget is spent
    (CI: ``VAULTPY_FUZZ_SECONDS``, default 60; the whole test stays under 90 s).
    A failure prints the seed, so the run can be repeated."""
    budget = float(os.environ.get("VAULTPY_FUZZ_SECONDS", "60"))
    start = time.monotonic()
    stop = start + budget
    master_seed = int(os.environ.get("VAULTPY_FUZZ_SEED", random.SystemRandom().getrandbits(32)))
    rng = random.Random(master_seed)
    counts = {name: 0 for name, _, _ in TARGETS}
    while time.monotonic() < stop:
        for name, strategy, prop in TARGETS:
            if time.monotonic() >= stop:
                break

            run = settings(max_examples=200, deadline=dt.timedelta(seconds=5), database=None,
                           phases=[Phase.generate, Phase.shrink], print_blob=True,
                           suppress_health_check=list(HealthCheck))(given(strategy)(
                               _counted(name, prop, counts, stop)))
            round_seed = rng.getrandbits(64)
            try:
                seed(round_seed)(run)()
            except BaseException:
                print(f"fuzz target {name!r} failed: VAULTPY_FUZZ_SEED={master_seed} "
                      f"(round seed {round_seed})")
                raise
    elapsed = time.monotonic() - start
    total = sum(counts.values())
    with capsys.disabled():
        print(f"\nfuzz: {total} examples in {elapsed:.0f} s (seed {master_seed}): "
              + ", ".join(f"{name} {n}" for name, n in counts.items()))
    assert elapsed < 120
    assert all(n > 0 for n in counts.values()), counts
