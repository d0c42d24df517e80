"""A study shared by two sweep processes on a real PostgreSQL server, the database clusters use.

CI (.ci/run) starts the server with scripts/postgres.sh and passes its URL (no password in it: the
script puts it in libpq's password file, $PGPASSFILE or ~/.pgpass) in MMPT_TEST_POSTGRES_URL; without it (a developer's machine) this module starts and stops a
server of its own with the same script, or is skipped where PostgreSQL cannot be run. In CI a
missing URL fails instead: the test is never skipped there."""
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from sweep_toy import ROOT, jobs, run, start, trials

pytestmark = [pytest.mark.subprocess, pytest.mark.sweep, pytest.mark.postgres]


def with_password(url: str, pgpass: str | None) -> str:
    """The URL with the password of its host and port from a libpq password file put in."""
    parsed = make_url(url)
    if parsed.password or not pgpass:
        return url
    for line in Path(pgpass).read_text().splitlines():
        host, port, _, user, password = line.split(":", 4)
        if (host, port, user) == (parsed.host, str(parsed.port), parsed.username):
            return parsed.set(password=password).render_as_string(hide_password=False)
    return url


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """The server's URL with its password in it (tests take it out where they need it out)."""
    url = os.environ.get("MMPT_TEST_POSTGRES_URL")
    if url:
        yield with_password(url, os.environ.get("PGPASSFILE") or os.path.expanduser("~/.pgpass"))
        return
    if os.environ.get("CI"):
        pytest.fail("CI runs without MMPT_TEST_POSTGRES_URL: .ci/run starts scripts/postgres.sh and sets it")
    # a server of its own, in a new folder directly under /tmp (the server's user must reach it)
    server = Path(tempfile.gettempdir()) / f"mmpt-pg-test-{uuid.uuid4().hex[:8]}"
    pgpass = server.with_name(server.name + ".pgpass")  # this server's password file, not the user's
    env = {**os.environ, "MMPT_PG_DIR": str(server), "PGPASSFILE": str(pgpass)}
    script = ["bash", str(ROOT / "scripts" / "postgres.sh")]
    proc = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, timeout=600)
    try:
        if proc.returncode != 0:
            pytest.skip(f"no PostgreSQL server here: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        url = proc.stdout.strip().splitlines()[-1]
        assert not make_url(url).password and f"password is in {pgpass}" in proc.stdout
        yield with_password(url, str(pgpass))
    finally:
        subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(server, ignore_errors=True)
        pgpass.unlink(missing_ok=True)


def test_two_workers_share_a_study_on_postgresql_and_never_print_its_password(postgres_url, tmp_path):
    url = make_url(postgres_url)
    assert url.password and url.host in ("127.0.0.1", "localhost")  # loopback only
    name = f"pg_{uuid.uuid4().hex[:8]}"
    args = (f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=3", "sleep=0.1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}")
    # one worker has the password in its URL, the other gets it from libpq's PGPASSWORD
    bare = url.set(password=None).render_as_string(hide_password=False)
    procs = [start(f"hydra.sweeper.storage={postgres_url}", *args),
             start(f"hydra.sweeper.storage={bare}", *args, env={"PGPASSWORD": url.password})]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-1500:] + outs[1][-1500:]
    done = trials(postgres_url, name)
    assert [t.state.name for t in done] == ["COMPLETE"] * 6
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 6 and sorted(jobs(tmp_path / "sweep")) == list(range(6))
    assert all(url.password not in out for out in outs) and "mmpt:***@" in outs[0]  # logged masked
    # the same study through the other URL form, into the same sweep dir (its folders hold both forms)
    again = run(f"hydra.sweeper.storage={bare}", *args[:1], "hydra.sweeper.n_trials=1", *args[2:],
                env={"PGPASSWORD": url.password})
    assert again.returncode == 0, again.stdout[-1500:] + again.stderr[-1500:]
    assert len(trials(postgres_url, name)) == 7 and sorted(jobs(tmp_path / "sweep")) == list(range(7))
    # a wrong password: one line naming the key, the password masked, nothing run
    bad = run(f"hydra.sweeper.storage={url.set(password='wrong-secret').render_as_string(hide_password=False)}",
              f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "wrong-secret" not in bad.stdout + bad.stderr
    assert "hydra.sweeper.storage" in bad.stderr and "cannot be reached" in bad.stderr and "***" in bad.stderr
    assert not (tmp_path / "bad").exists()
