"""Chapter 10's shared storage, for real: a PostgreSQL server from Debian's package, worker processes on one study.

The fixture starts its own server in a fresh directory on a free port (as the `postgres` user through `runuser` when
the test runs as root, since PostgreSQL refuses to run as root; directly otherwise) and always stops it and removes
the directory. `make test` installs the package (the Makefile's Debian packages); without its binaries the tests skip
and say so.

- Two worker processes run `optbook.search.tune` on one study, each with n_trials=K. Exactly 2K trials complete, and
  that is guaranteed by the design, not by timing: `study.optimize(n_trials=K)` runs K trials in its own process and
  the objective never fails or prunes, so each worker completes exactly K; the database hands out trial numbers in a
  transaction, so they are unique. (Optuna's MaxTrialsCallback, by contrast, checks the total only after a trial
  ends, so workers that start trials at the same moment can overshoot.) Each worker logs the trials it completed;
  the two logs are disjoint and their union is the database's set of completed trials, numbered 0..2K-1.
- A worker killed with SIGKILL inside its objective leaves a RUNNING trial behind. With Optuna's heartbeat
  (heartbeat_interval=1; grace_period=2 for the process that resumes the study, 60 for the workers, so that a slow
  machine never makes a live worker's trial look stale) the next optimize() marks it FAIL, RetryHeartbeatStaleTrialCallback queues it again
  with the same parameters, the requested trials complete, and best_trial works.
"""
import json, os, pathlib, pwd, shutil, signal, socket, subprocess, sys, tempfile, textwrap, time, warnings

import pytest

from conftest import ROOT

# Debian's server binaries live under /usr/lib/postgresql/<major>/bin (15 on bookworm, 16 on Ubuntu 24.04): the newest
PG_BIN = max((p.parent for p in pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb")),
             key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, default=pathlib.Path("/usr/lib/postgresql/15/bin"))
USER, DB = "optbook", "optuna"
K = 6                                    # trials per worker

pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").exists(),
                                reason=f"PostgreSQL's server binaries are not in {PG_BIN} (Debian package `postgresql`; `make test` installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd):
    "PostgreSQL refuses to run as root: as root, run its commands as `postgres`; otherwise as ourselves."
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    "A running PostgreSQL server with database DB: yields its SQLAlchemy URL; always stopped and removed."
    pytest.importorskip("psycopg2")
    pytest.importorskip("optuna")
    root = pathlib.Path(tempfile.mkdtemp(prefix="optbook-pg-"))
    data, port = root / "data", _free_port()
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        run = lambda cmd: subprocess.run(_as_server_user(cmd), check=True, capture_output=True, text=True, timeout=60)
        run([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER])
        run([*ctl, "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-l", str(root / "server.log"), "-w", "start"])
        started = True
        run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DB])
        yield f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{DB}"
    finally:
        if started:
            subprocess.run(_as_server_user([*ctl, "-m", "fast", "-w", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


WORKER = textwrap.dedent('''
    import json, math, sys, time, warnings
    import optuna
    from optbook.search import tune
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, study_name, n_trials, log, mode, seed = sys.argv[1:7]

    def storage():   # grace 60 s: only a minute-long stall could make a live trial look stale (the checker uses 2 s)
        return optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=60,
                                          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))

    def objective(hp, report):
        if mode == "hang":                           # say where we are, then wait to be killed
            with open(log, "a") as f: f.write(json.dumps({"inside": True, "params": hp}) + "\\n")
            time.sleep(120)
        time.sleep(0.05)                             # long enough for the two workers to interleave
        return (hp["x"] - 0.3) ** 2 + hp["k"]

    def done(study, trial):                          # called after each trial ends: log the completed ones
        if trial.state == optuna.trial.TrialState.COMPLETE:
            with open(log, "a") as f: f.write(json.dumps({"number": trial.number, "params": trial.params}) + "\\n")

    tune(objective, dict(x=(-1.0, 1.0), k=(0, 3, "int")), int(n_trials), storage=storage(), study_name=study_name,
         seed=int(seed), callbacks=[done])
''')


def _worker(tmp_path, url, study, n, log, mode="normal", seed=0):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), url, study, str(n), str(log), mode, str(seed)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(path):
    return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()] if pathlib.Path(path).exists() else []


def _storage(url):
    import optuna
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2,
                                          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))


def test_two_workers_complete_exactly_the_requested_trials(postgres, tmp_path):
    import optuna
    optuna.create_study(storage=postgres, study_name="shared")            # once, before the workers join it
    logs = [tmp_path / f"worker{i}.jsonl" for i in range(2)]
    procs = [_worker(tmp_path, postgres, "shared", K, logs[i], seed=i) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres)
    trials = study.get_trials(deepcopy=False)
    complete = {t.number: t.params for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(trials) == len(complete) == 2 * K, [t.state for t in trials]
    assert sorted(complete) == list(range(2 * K)), "trial numbers unique and contiguous"
    logged = [{l["number"]: l["params"] for l in _lines(log)} for log in logs]
    assert [len(l) for l in logged] == [K, K], "each worker completed exactly its K"
    assert not set(logged[0]) & set(logged[1]), "no trial completed twice"
    assert {**logged[0], **logged[1]} == complete, "none lost: the logs are the database's completed trials"
    assert study.best_value == min(t.value for t in trials)


def test_a_worker_killed_mid_trial_leaves_the_study_usable(postgres, tmp_path):
    import optuna
    from optbook.search import tune
    optuna.create_study(storage=postgres, study_name="killed")
    log = tmp_path / "hang.jsonl"
    proc = _worker(tmp_path, postgres, "killed", 1, log, mode="hang")
    deadline = time.monotonic() + 60
    while not any(l.get("inside") for l in _lines(log)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the worker never entered its objective"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_params = _lines(log)[0]["params"]
    study = optuna.load_study(study_name="killed", storage=postgres)
    [stale] = study.get_trials(deepcopy=False)
    assert stale.state == optuna.trial.TrialState.RUNNING, "the killed worker could not close its trial"

    time.sleep(3.5)                                       # past grace_period=2 since the last heartbeat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = tune(lambda hp, report: (hp["x"] - 0.3) ** 2 + hp["k"], dict(x=(-1.0, 1.0), k=(0, 3, "int")), 3,
                     storage=_storage(postgres), study_name="killed", seed=5)
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert trials[0].number == stale.number and states[0] == optuna.trial.TrialState.FAIL
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and optuna.trial.TrialState.RUNNING not in states
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = [t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == stale.number]
    assert len(retried) == 1 and retried[0].params == killed_params, "the killed trial ran again with its parameters"
    assert retried[0].state == optuna.trial.TrialState.COMPLETE
    assert study.best_trial.state == optuna.trial.TrialState.COMPLETE
    assert study.best_value == min(t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
