"""Template placeholders (DESIGN §2): ``{{ secrets.<id> }}``, ``{{{{`` for a literal ``{{``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultpy.templates import (
    ID_PATTERN,
    Ref,
    TemplateError,
    check,
    near_misses,
    parse,
    references,
    render,
)


def segs(text: str) -> list[str | Ref]:
    """parse() without empty literal segments (those are checked once, separately)."""
    return [s for s in parse(text) if s != ""]


# ----------------------------------------------------------------------------- parse


def test_plain_text_is_one_literal():
    assert parse("hello\nworld\n") == ["hello\nworld\n"]
    assert parse("") == []
    assert references("no placeholders") == []
    assert render("no placeholders", {}) == b"no placeholders"


def test_one_placeholder():
    assert parse("DB={{ secrets.db }}\n") == ["DB=", Ref("db"), "\n"]
    assert references("DB={{ secrets.db }}\n") == ["db"]


def test_placeholder_alone():
    assert segs("{{ secrets.db }}") == [Ref("db")]


def test_parse_yields_no_empty_literal_segments():
    """A placeholder at the start, or two adjacent ones, must not produce "" literals
    (parse() already drops an empty trailing literal; the mid-text check tests the
    list ``buf`` instead of its joined content)."""
    for text in ("{{ secrets.a }}", "{{ secrets.a }}{{ secrets.b }}", "x{{ secrets.a }}"):
        assert "" not in parse(text), parse(text)


def test_several_placeholders_and_references_in_order_of_first_use():
    text = "{{ secrets.b }}:{{ secrets.a }}/{{ secrets.b }}{{secrets.c}}"
    assert segs(text) == [Ref("b"), ":", Ref("a"), "/", Ref("b"), Ref("c")]
    assert references(text) == ["b", "a", "c"]


@pytest.mark.parametrize("text", [
    "{{secrets.a}}",
    "{{ secrets.a }}",
    "{{  secrets.a  }}",
    "{{secrets.a   }}",
    "{{     secrets.a}}",
    "{{\tsecrets.a\t}}",             # a tab, as a space (it was text, kept verbatim)
    "{{ \t secrets.a }}",
])
def test_spaces_inside_the_braces_are_optional(text):
    assert segs(text) == [Ref("a")]
    assert render(text, {"a": b"v"}) == b"v"


@pytest.mark.parametrize("sid", ["db.password", "db-password", "a_b", "A9", "9", "x.y-z_w",
                                 "a.", "a-"])
def test_ids_with_dots_dashes_and_underscores(sid):
    assert parse(f"<{{{{ secrets.{sid} }}}}>") == ["<", Ref(sid), ">"]
    assert render(f"<{{{{ secrets.{sid} }}}}>", {sid: b"V"}) == b"<V>"


def test_quadruple_brace_writes_a_literal_double_brace():
    assert render("a{{{{b", {}) == b"a{{b"
    # the escape also protects something that would otherwise be a placeholder
    assert parse("{{{{ secrets.a }}") == ["{{ secrets.a }}"]
    assert references("{{{{ secrets.a }}") == []
    assert render("{{{{{{{{", {}) == b"{{{{"
    assert render("x {{{{ secrets.a }} {{ secrets.a }}", {"a": b"S"}) == \
        b"x {{ secrets.a }} S"


@pytest.mark.parametrize("text", [
    "{{ foo }}",
    "{{ .Values.password }}",      # helm / go templates
    "{{secret.a}}",                # not "secrets."
    "{{ secretsX }}",
    "{{ Secrets.a }}",             # case-sensitive
    "{{",
    "}}",
    "a {{ b }} c {{ d",
    "{{{ x }}}",
    "{ secrets.a }",
    "secrets.a }}",
])
def test_other_double_braces_are_ordinary_text(text):
    assert parse(text) == [text]
    assert references(text) == []
    assert render(text, {}) == text.encode()


def test_other_braces_next_to_a_placeholder():
    text = "{{ foo }} {{ secrets.a }} {{ bar }}"
    assert parse(text) == ["{{ foo }} ", Ref("a"), " {{ bar }}"]
    assert render(text, {"a": b"X"}) == b"{{ foo }} X {{ bar }}"


@pytest.mark.parametrize(("text", "line", "column"), [
    ("{{ secrets.", 1, 1),
    ("{{ secrets.a }", 1, 1),
    ("{{ secrets.a b }}", 1, 1),
    ("{{ secrets.}}", 1, 1),
    ("{{ secrets. a }}", 1, 1),
    ("{{ secrets.a\n}}", 1, 1),
    ("{{ secrets.a } }", 1, 1),
    ("{{ secrets.-a }}", 1, 1),        # an id starts with [A-Za-z0-9]
    ("{{ secrets.a!b }}", 1, 1),
    ("x = {{secrets.", 1, 5),
    ("one\ntwo\n  {{ secrets.a", 3, 3),
    ("ok {{ secrets.a }}\nbad: {{ secrets.b }", 2, 6),
    ("é{{ secrets.", 1, 2),            # columns count characters, not bytes
])
def test_broken_placeholder_is_an_error_with_line_and_column(text, line, column):
    with pytest.raises(TemplateError) as exc:
        parse(text)
    assert (exc.value.line, exc.value.column) == (line, column)
    assert f"line {line} column {column}" in str(exc.value)
    with pytest.raises(TemplateError):
        references(text)
    with pytest.raises(TemplateError):
        render(text, {"a": b"x", "b": b"y"})


def test_check_names_every_broken_placeholder_and_every_id():
    """hosts.toml's messages name them all at once: one at a time, a user fixed line 3,
    then learnt of line 2."""
    text = "a {{ secrets.x }}\nb {{ secrets.y\nc {{ secrets.z }} {{ secrets. }}"
    ids, broken = check(text)
    assert ids == ["x", "z"]
    assert [(e.line, e.column) for e in broken] == [(2, 3), (3, 19)]
    assert check("{{ secrets.a }}") == (["a"], [])


@pytest.mark.parametrize(("text", "found"), [
    ("A={{ secret.db }}", [(1, 3, "{{ secret.db }}", "{{ secrets.db }}")]),
    ("\n  {{Secrets.db}}", [(2, 3, "{{Secrets.db}}", "{{ secrets.db }}")]),
    ("{{ SECRETS: x.y }}", [(1, 1, "{{ SECRETS: x.y }}", "{{ secrets.x.y }}")]),
    ("{{ secrets . db }}", [(1, 1, "{{ secrets . db }}", "{{ secrets.db }}")]),
    ("{{ secrets.db }}", []),              # a placeholder
    ("{{{{ secret.db }}", []),             # written as a literal on purpose
    ("{{ .Values.secret }}", []),          # another tool's
    ("{{ secretary.x }}", []),
])
def test_near_misses_are_what_reads_like_a_mistyped_placeholder(text, found):
    assert near_misses(text) == found
    assert references(text) == (["db"] if text == "{{ secrets.db }}" else [])


def test_template_error_is_a_value_error():
    assert issubclass(TemplateError, ValueError)


def test_brace_run_before_a_placeholder_is_not_silently_left_unrendered():
    """``{{{ secrets.a }}``: the ``{{`` at offset 1 is followed by `` secrets.``, so by
    DESIGN §2 it "must form a complete placeholder".  Rendering must therefore either
    substitute it (``{`` + value) or refuse the template; leaving the text
    ``{{{ secrets.a }}`` in the output (and ``a`` out of ``references``, so the host
    would not even receive the ciphertext) is the wrong result."""
    try:
        segments = segs("{{{ secrets.a }}")
    except TemplateError:
        return
    assert segments == ["{", Ref("a")]
    assert references("{{{ secrets.a }}") == ["a"]


# ----------------------------------------------------------------------------- render


def test_render_inserts_bytes_verbatim():
    values = {"a": b"\xff\xfe\x00binary\x80", "b": "pässwörd".encode()}
    out = render("A={{ secrets.a }};B={{ secrets.b }};\n", values)
    assert out == b"A=\xff\xfe\x00binary\x80;B=" + "pässwörd".encode() + b";\n"


def test_render_encodes_literal_text_as_utf8():
    assert render("ü {{ secrets.a }} €", {"a": b"\xff"}) == "ü ".encode() + b"\xff" + " €".encode()


def test_render_same_secret_twice():
    assert render("{{ secrets.a }}-{{ secrets.a }}", {"a": b"x"}) == b"x-x"


def test_trim_strips_whitespace_of_inserted_secrets_only():
    text = "  key = {{ secrets.a }} ;\t\n"
    values = {"a": b" \t secret\n\n"}
    assert render(text, values) == b"  key =  \t secret\n\n ;\t\n"
    assert render(text, values, trim=True) == b"  key = secret ;\t\n"


def test_trim_keeps_inner_whitespace_of_secrets():
    assert render("{{ secrets.a }}", {"a": b"\n a b \n"}, trim=True) == b"a b"


def test_trim_of_an_all_whitespace_secret_is_empty():
    assert render("[{{ secrets.a }}]", {"a": b" \n\t"}, trim=True) == b"[]"


def test_missing_value_is_a_key_error_naming_the_id():
    with pytest.raises(KeyError) as exc:
        render("{{ secrets.a }} {{ secrets.missing.id }}", {"a": b"x"})
    assert exc.value.args[0] == "missing.id"


def test_extra_values_are_ignored():
    assert render("{{ secrets.a }}", {"a": b"1", "b": b"2"}) == b"1"


# ----------------------------------------------------------------------------- properties

_no_open_brace = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
_ids = st.from_regex(rf"\A{ID_PATTERN}\Z", fullmatch=True).filter(lambda s: len(s) <= 40)


@settings(max_examples=200, deadline=None)
@given(_no_open_brace.filter(lambda s: "{{" not in s))
def test_text_without_double_brace_is_unchanged(text):
    segments = parse(text)
    assert "".join(s for s in segments if isinstance(s, str)) == text
    assert not any(isinstance(s, Ref) for s in segments)
    assert render(text, {}) == text.encode("utf-8")
    assert render(text, {}, trim=True) == text.encode("utf-8")


_side = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{"),
                max_size=30)


@settings(max_examples=200, deadline=None)
@given(sid=_ids, value=st.binary(max_size=64), left=st.integers(0, 3),
       right=st.integers(0, 3), prefix=_side, suffix=_side)
def test_any_id_renders_to_its_value(sid, value, left, right, prefix, suffix):
    text = prefix + "{{" + " " * left + "secrets." + sid + " " * right + "}}" + suffix
    assert references(text) == [sid]
    assert render(text, {sid: value}) == prefix.encode() + value + suffix.encode()
    assert render(text, {sid: value}, trim=True) == \
        prefix.encode() + value.strip() + suffix.encode()


@pytest.mark.parametrize("text, mid", [
    ("URL=x:{{ secrets.pw }}@db\n", True),
    ("PW={{ secrets.pw }}\nNEXT=1\n", False),
    ("PW={{ secrets.pw }}", False),
    ("PW={{ secrets.pw }}\r\n", False),
    ("{{ secrets.pw }}{{ secrets.user }}\n", True),
    ("A={{ secrets.pw }}\nB={{ secrets.pw }} tail\n", True),
    ("A={{ secrets.other }} tail\n", False),
])
def test_mid_line(text: str, mid: bool) -> None:
    """A placeholder with more of its line after it: a value ending in a newline (what
    editors save) would split that line."""
    from vaultpy.templates import mid_line

    assert mid_line(text, "pw") is mid


def test_encrypt_and_edit_warn_of_a_newline_a_template_puts_mid_line(make_repo) -> None:
    import json

    from conftest import hosts_toml

    repo = make_repo(hosts=1, secrets={"pw": b"x", "tok": b"y"})
    h = repo.hosts["host0"]
    content = json.dumps("URL=a:{{ secrets.pw }}@db\nT={{ secrets.tok }}\n")  # TOML-safe
    repo.write_hosts(hosts_toml([repo.recipient], ["pw", "tok"], {"host0": (h.pubkey, [])}) +
                     f'[hosts.host0.templates."app.env"]\ncontent = {content}\n')
    err = repo.ok("encrypt", "pw", input=b"s3cret\n").stderr.decode()
    assert ("warning: pw ends with a newline, and template app.env (on host0) has text after "
            "it on the same line") in err and "trim = true" in err
    for quiet in (("pw", b"s3cret"), ("tok", b"t0k\n")):       # no newline; at a line end
        assert "warning" not in repo.ok("encrypt", quiet[0], input=quiet[1]).stderr.decode()
    assert "warning: tok is now empty" in repo.ok("encrypt", "tok", "--allow-empty",
                                                  input=b"").stderr.decode()
    editor = repo.root / "ed.sh"
    editor.write_text("#!/bin/sh\nprintf 'edited\\n' > \"$1\"\n")
    editor.chmod(0o755)
    err = repo.ok("edit", "pw", env={"EDITOR": str(editor)}).stderr.decode()
    assert "warning: pw ends with a newline" in err


# ------------------------------------------------------------ templates in their own files

def _file_template_repo(make_repo, text: str, table: str = 'file = "templates/app.env"\n'):
    from conftest import hosts_toml

    repo = make_repo(hosts=1, secrets={"pw": b"pw-value\n", "tok": b"tok-value"})
    h = repo.hosts["host0"]
    (repo.root / "templates").mkdir()
    (repo.root / "templates" / "app.env").write_text(text)
    repo.write_hosts(hosts_toml([repo.recipient], ["pw", "tok"], {"host0": (h.pubkey, [])})
                     + '[hosts.host0.templates."app.env"]\n' + table + "trim = true\n")
    return repo


def _host_cache(repo) -> dict[str, bytes]:
    from conftest import age_decrypt

    return {p.name.split(".")[0]: age_decrypt(p, repo.hosts["host0"].key)
            for p in sorted((repo.cache / "host0").glob("*.age"))}


def test_a_template_may_live_in_its_own_file(make_repo) -> None:
    """file = "templates/app.env": its text is the template, as content would be; a
    change to that file alone changes what the host needs, and the no-op memo of renc
    and check must see it (the file is one of their inputs)."""
    import json

    from memo_helpers import settled, trusted

    text = "# app\nPW={{ secrets.pw }}\n"
    repo = _file_template_repo(make_repo, text)
    repo.ok("renc")
    assert _host_cache(repo) == {"pw": b"pw-value\n"}      # the age CLI opened it
    profile = json.loads(repo.ok("profile", "--host", "host0").stdout)
    assert [(t["name"], t["content"], t["trim"]) for t in profile["templates"]] == [
        ("app.env", text, True)]
    assert {s["id"]: s["install"] for s in profile["secrets"]} == {"pw": False}

    settled(repo)
    (repo.root / "templates" / "app.env").write_text(text + "TOKEN={{ secrets.tok }}\n")
    assert not trusted(repo, "check") and not trusted(repo, "renc")
    proc = repo.run("check")
    assert proc.returncode == 1 and "tok" in proc.stdout.decode() + proc.stderr.decode()
    repo.ok("renc")
    assert _host_cache(repo) == {"pw": b"pw-value\n", "tok": b"tok-value"}
    repo.ok("check")

    # A placeholder mistyped in the file is named in the file, with its line.
    (repo.root / "templates" / "app.env").write_text("A={{ secret.pw }}\nB={{ secrets.pw }}\n")
    err = repo.ok("renc").stderr.decode()
    assert ("templates/app.env: hosts.host0.templates.\"app.env\".file: line 1 column 3: "
            "'{{ secret.pw }}' is kept as text") in err, err


@pytest.mark.parametrize(("setup", "table", "needles"), [
    (None, 'file = "templates/nope.env"\n',
     ("templates/nope.env", 'hosts.host0.templates."app.env".file',
      "cannot read the template: No such file or directory",
      "a relative one is read from hosts.toml's directory")),
    (None, 'file = "templates/app.env"\ncontent = "x"\n',
     ("hosts.toml", 'hosts.host0.templates."app.env".file',
      "a template has content or a file, not both", "remove one of them")),
    (None, 'file = ""\n', ("hosts.toml", 'templates."app.env".file', "an empty path")),
    (None, "file = 3\n", ("hosts.toml", 'templates."app.env".file', "expected a string")),
    (None, "trim = false\n", ('templates."app.env".content', "missing",
                              'or the file that holds it (file = "templates/…")')),
    ("latin-1", 'file = "templates/app.env"\n',
     ("hosts.toml", 'templates."app.env".file', "templates/app.env is not UTF-8 text (byte 3)",
      "keep binary data in a secret")),
    ("unknown id", 'file = "templates/app.env"\n',
     ("templates/app.env", 'hosts.host0.templates."app.env".file',
      "line 2 column 3: unknown secret id 'nope' in placeholder")),
    ("broken", 'file = "templates/app.env"\n',
     ("templates/app.env", 'hosts.host0.templates."app.env".file', "line 1")),
    ("fifo", 'file = "templates/fifo"\n',
     ("templates/fifo", 'templates."app.env".file', "not a regular file")),
    ("directory", 'file = "templates"\n',
     ("templates", 'templates."app.env".file', "cannot read the template")),
    ("symlink", 'file = "templates/link.env"\n',
     ("templates/link.env", 'templates."app.env".file', "a symbolic link, not a file",
      "point file at the file itself")),
])
def test_a_bad_template_file_is_one_clear_line(make_repo, setup, table, needles) -> None:
    import os

    from conftest import assert_one_clean_error

    repo = _file_template_repo(make_repo, "PW={{ secrets.pw }}\n",
                               table.replace("trim = false\n", ""))
    if "trim = false" in table:
        text = (repo.root / "hosts.toml").read_text()
        (repo.root / "hosts.toml").write_text(text.replace("trim = true\n", table))
    app = repo.root / "templates" / "app.env"
    if setup == "latin-1":
        app.write_bytes(b"PW=\xe9\n")
    elif setup == "unknown id":
        app.write_text("PW={{ secrets.pw }}\nX={{ secrets.nope }}\n")
    elif setup == "broken":
        app.write_text("PW={{ secrets.pw\n")
    elif setup == "fifo":
        os.mkfifo(repo.root / "templates" / "fifo")
    elif setup == "symlink":
        (repo.root / "templates" / "link.env").symlink_to("app.env")
    for command in ("check", "renc"):
        assert_one_clean_error(repo.run(command, timeout=30), *needles)


def test_the_memo_never_vouches_for_a_template_file_no_run_read(make_repo) -> None:
    """The template is read with hosts.toml, and the memo stats its inputs after: a
    symlinked folder on its path retargeted in between (to files older than the run) had
    the memo record the new file's stat with the old file's answer, and check said ok
    for good (a review).  What was read is what the memo must record, or nothing."""
    import os

    from vaultpy import model
    from vaultpy._internal import memo

    repo = _file_template_repo(make_repo, "PW={{ secrets.pw }}\n")
    for folder, text in (("ta", "PW={{ secrets.pw }}\n"),
                         ("tb", "PW={{ secrets.pw }}\nT={{ secrets.tok }}\n")):
        (repo.root / folder).mkdir()
        (repo.root / folder / "app.env").write_text(text)
        os.utime(repo.root / folder / "app.env", (1_000_000_000, 1_000_000_000))
    (repo.root / "templates" / "app.env").unlink()
    (repo.root / "templates").rmdir()
    (repo.root / "templates").symlink_to("ta")
    repo.ok("renc")
    os.environ.pop("VAULTPY_NO_MEMO", None)
    snap = memo.begin(repo.root)
    assert snap is not None
    cfg = model.load(repo.root)                     # reads ta/app.env
    (repo.root / "next").symlink_to("tb")
    os.replace(repo.root / "next", repo.root / "templates")    # retargeted before the stat
    snap.capture(cfg)
    assert snap.lists is None                       # nothing to commit
    snap = memo.begin(repo.root)                    # untouched meanwhile: recorded
    assert snap is not None
    snap.capture(model.load(repo.root))
    assert snap.lists is not None


@pytest.mark.parametrize(("target", "what"), [
    ("hosts.toml", "hosts.toml itself"),
    ("secrets/pw.age", "the master file of secret 'pw'"),
])
def test_a_template_file_is_a_file_of_its_own(make_repo, target, what) -> None:
    """file = "secrets/pw.age" (an armored master reads as text): the incremental renc
    reported success where the full one failed (a review).  Refused, with the reason."""
    import subprocess

    from conftest import assert_one_clean_error

    repo = _file_template_repo(make_repo, "x", f'file = "{target}"\n')
    armored = subprocess.run(["age", "-a", "-r", repo.recipient], input=b"pw-value\n",
                             check=True, capture_output=True).stdout
    (repo.root / "secrets" / "pw.age").write_bytes(armored)     # text, as a template is
    for command in ("check", "renc"):
        assert_one_clean_error(repo.run(command), 'hosts.host0.templates."app.env".file',
                               f"{target} is {what}", "give the template a file of its own")


def test_a_nul_in_a_template_is_refused_as_nix_would(make_repo) -> None:
    """Nix cannot hold a NUL: inline content was cut at it without a word, a file's
    failed the build.  vaultpy check refuses both, naming where."""
    from conftest import assert_one_clean_error

    repo = _file_template_repo(make_repo, "A=\0B\n")
    assert_one_clean_error(repo.run("check"), "templates/app.env holds a NUL byte (byte 2)")
    repo = _file_template_repo(make_repo, "", 'content = "A=\\u0000B"\n')
    assert_one_clean_error(repo.run("check"), 'hosts.host0.templates."app.env".content',
                           "holds a NUL character")
