"""`tracecap keys`: CURVE key pairs, the secret half 0600 whatever the umask, never clobbered."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from tracecap import cli, keys


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        public, secret = keys.make_keypair(str(tmp_path / "k"), "box1")
    finally:
        os.umask(old)
    assert public == str(tmp_path / "k" / "box1.key")
    assert secret == str(tmp_path / "k" / "box1.key_secret")
    assert mode(Path(public)) == 0o644
    assert mode(Path(secret)) == 0o600


def test_zmq_auth_reads_both_files_and_the_pair_matches(tmp_path: Path) -> None:
    public_path, secret_path = keys.make_keypair(str(tmp_path), "box1")
    public, none = zmq.auth.load_certificate(public_path)
    public2, secret = zmq.auth.load_certificate(secret_path)
    assert none is None and public == public2 and secret is not None
    assert zmq.curve_public(secret) == public  # the secret really is this public key's half
    # the allow-list reader (what configure_curve uses) sees exactly the public key
    assert zmq.auth.load_certificates(str(tmp_path)) == {public: True}
    assert keys.load_secret(secret_path) == (public, secret)
    assert keys.load_public(public_path) == public


def test_refuses_to_overwrite_either_half(tmp_path: Path) -> None:
    public_path, secret_path = keys.make_keypair(str(tmp_path), "box1")
    before = Path(secret_path).read_bytes()
    with pytest.raises(keys.KeyFileError, match="refusing to overwrite"):
        keys.make_keypair(str(tmp_path), "box1")
    assert Path(secret_path).read_bytes() == before
    os.unlink(public_path)  # only the secret left: still refused, and it is left alone
    with pytest.raises(keys.KeyFileError, match="refusing to overwrite"):
        keys.make_keypair(str(tmp_path), "box1")
    assert Path(secret_path).read_bytes() == before


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "k").mkdir()
    os.symlink(target, tmp_path / "k" / "box1.key_secret")
    with pytest.raises(keys.KeyFileError):
        keys.make_keypair(str(tmp_path / "k"), "box1")
    assert not target.exists()
    assert not (tmp_path / "k" / "box1.key").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "-x", "", "x" * 65])
def test_names_are_plain_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(keys.KeyFileError, match="--name"):
        keys.make_keypair(str(tmp_path), name)
    assert list(tmp_path.iterdir()) == []


def test_a_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    _, secret_path = keys.make_keypair(str(tmp_path), "box1")
    os.chmod(secret_path, 0o640)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load_secret(secret_path)


def test_a_public_file_is_not_a_secret(tmp_path: Path) -> None:
    public_path, _ = keys.make_keypair(str(tmp_path), "box1")
    os.chmod(public_path, 0o600)
    with pytest.raises(keys.KeyFileError, match="no secret key"):
        keys.load_secret(public_path)


def test_garbage_is_not_a_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(keys.KeyFileError, match="not a CURVE key"):
        keys.load_public(str(bad))
    with pytest.raises(keys.KeyFileError, match="not a CURVE key"):
        keys.allow_list(str(tmp_path))


def test_cli_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", str(tmp_path / "k"), "--name", "server"]) == 0
    out = capsys.readouterr().out
    assert "server.key_secret" in out and mode(tmp_path / "k" / "server.key_secret") == 0o600
    assert cli.main(["keys", str(tmp_path / "k"), "--name", "server"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cli.main(["keys"]) == 2
    assert cli.main(["keys", str(tmp_path), "--name", "../x"]) == 2


def test_cli_keys_default_name_is_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys.socket, "gethostname", lambda: "box7.example.org")
    assert cli.main(["keys", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box7.key", "box7.key_secret"]
