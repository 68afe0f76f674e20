"""The shortest path through the pipeline, as a user runs it."""

from conftest import age_decrypt


def test_encrypt_renc_check_and_age_cli_decrypts(make_repo):
    repo = make_repo(hosts=2, secrets={"alpha": b"one", "beta": b""})
    repo.ok("renc")
    repo.ok("check")
    for host in repo.hosts.values():
        files = sorted((repo.cache / host.name).glob("*.age"))
        assert [f.name.split(".")[0] for f in files] == ["alpha", "beta"]
        assert [age_decrypt(f, host.key) for f in files] == [b"one", b""]
