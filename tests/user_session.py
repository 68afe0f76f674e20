"""A user's login session, for the tests of a user's profile (tests/test_activate_user.py).

Run as root inside ``unshare -m`` (a private mount namespace)::

    python tests/user_session.py SPEC_JSON

SPEC: {"uid", "gid", "home", "runtime" (made a tmpfs of the user's, 0700, as
pam_systemd makes /run/user/<uid>; "" leaves it as it is), "env" (extra variables),
"binds" (optional: {system file: file bind-mounted over it in this namespace alone,
as /etc/group with another member}),
"steps": [["activate", ARG...] | ["vaultpy", ARG...] | ["sh", SCRIPT], ...]}.

It mounts the runtime directory, then becomes the user for good (setgroups, setgid,
setuid: a real process of that uid, no capability left) and runs each step: ``activate``
is ``vaultpy-activate`` run in this process (the interpreter, under /root, is not
the user's to start again), ``vaultpy`` the CLI likewise (once a session: its console
is made once), ``sh`` a shell as the user.  One JSON line per step on
stdout: {"rc", "out", "err"}.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["runtime"]:
        os.makedirs(spec["runtime"], exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o",
                        f"mode=0700,uid={spec['uid']},gid={spec['gid']},size=16m",
                        "tmpfs", spec["runtime"]], check=True)
    for target, source in spec.get("binds", {}).items():
        subprocess.run(["mount", "--bind", source, target], check=True)
    # Everything activation imports, imported while the interpreter's files are
    # readable (they are root's): the user could not import them later.
    import array  # noqa: F401  (memo: status --json)
    import ctypes  # noqa: F401  (fsutil: syncfs, renameat2)
    import grp  # noqa: F401  (links: who else is in the user's group)
    import pwd  # noqa: F401
    import resource  # noqa: F401
    import shutil  # noqa: F401  (notify, when it calls systemctl)

    import cryptography.exceptions  # (age: SSH keys)
    import cryptography.hazmat.primitives.serialization  # noqa: F401
    import pyrage  # noqa: F401
    import rich.table  # noqa: F401  (status)

    import vaultpy.activate  # noqa: F401
    import vaultpy.activate.main as entry
    import vaultpy.cli as cli
    from vaultpy import age, profile, templates  # noqa: F401
    from vaultpy._internal import leave  # noqa: F401

    os.setgroups([])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    os.environ.clear()
    os.environ.update({"HOME": spec["home"], "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                       **({"XDG_RUNTIME_DIR": spec["runtime"]} if spec["runtime"] else {}),
                       **spec.get("env", {})})
    os.chdir(spec["home"])
    for step in spec["steps"]:
        if step[0] in ("activate", "vaultpy"):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    if step[0] == "activate":
                        rc = entry.main(step[1:])
                    else:
                        sys.argv = ["vaultpy", *step[1:]]
                        cli.main()
                        rc = 0
                except SystemExit as exc:
                    rc = exc.code if isinstance(exc.code, int) else 2
            row = {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}
        else:
            proc = subprocess.run(["/bin/sh", "-c", step[1]], capture_output=True, text=True)
            row = {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
