"""Hostile completions: every one scores 0 on ``code`` and ``humaneval``, and nothing escapes.

Each exploit is a block of code that a completion runs when the function under test is called.
Exploits that try to *forge* a pass leave the answer wrong; exploits that try to *reach* something
(a file, the network, another process) return the right answer only when the attempt worked. So a
score of 1.0 means the exploit succeeded, either way. After scoring them all (in parallel, to keep
the suite fast), every test also checks that no process of the runs survives, that no file
appeared outside the sandbox, and that a canary process and a canary file are untouched.

The attacks are real (they kill processes and delete files when they work), so the suite only runs
with OS isolation (bubblewrap); without it, it skips, unless ``COMMIT_ENV_SANDBOX_TESTS=require``
(set by CI after installing bubblewrap) turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from commit_env.tasks.base import Example
from commit_env.tasks.code import LinearFunctionCode
from commit_env.tasks.humaneval import HumanEval
from commit_env.tasks.sandbox import RUN_TAG_VAR, sandbox_backend

TIMEOUT = 2.0
MARK = "cehostile" + secrets.token_hex(4)  # in every exploit's spawned argv and file names

# name -> code run inside the function. Names available: RIGHT (the right answer), CANARY_PID,
# CANARY_FILE, OUTSIDE (a host directory that must stay empty), PORT (a host TCP listener), MARK.
# Set RESULT to answer; RESULT = RIGHT only after an attack that must not work has worked.
EXPLOITS = {
    # --- forging the verdict (the exploits and friends) ---
    "main-exit": "__import__('__main__')._exit(0)",
    "posix-reimport-exit": (
        "import sys\nsys.modules.pop('posix', None)\nimport posix\nposix._exit(0)"
    ),
    "ctypes-exit": "import ctypes\nctypes.CDLL(None)._exit(0)",
    "ctypes-exit-group": "import ctypes\nctypes.CDLL(None).syscall(231, 0)  # exit_group",
    "sys-exit": "import sys\nsys.exit(0)",
    "raise-systemexit": "raise SystemExit(0)",
    "always-true-eq": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\nRESULT = Anything()"
    ),
    "int-subclass-eq": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\nRESULT = Int(0)"
    ),
    "patched-type-builtin": (
        "import builtins\nreal = builtins.type\n"
        "class Int(int):\n    def __eq__(self, other):\n        return True\n"
        "builtins.type = lambda *a: int if len(a) == 1 and isinstance(a[0], Int) else real(*a)\n"
        "RESULT = Int(0)"
    ),
    "forged-token-on-every-fd": (
        'import os\nline = b\'0\' * 64 + b\' {"passed": true, "status": "passed"}\\n\'\n'
        "for fd in range(0, 256):\n"
        "    try:\n        os.write(fd, line)\n    except OSError:\n        pass\n"
        "print(line.decode())\n__import__('__main__')._exit(0)"
    ),
    "token-hunt-in-proc": (
        "import os\nfound = 0\n"
        "for pid in os.listdir('/proc'):\n"
        "    if not pid.isdigit():\n        continue\n"
        "    for path in ('/proc/%s/environ' % pid, '/proc/%s/cmdline' % pid):\n"
        "        try:\n            open(path, 'rb').read()\n        except OSError:\n"
        "            continue\n"
        "    try:\n        fds = os.listdir('/proc/%s/fd' % pid)\n    except OSError:\n"
        "        continue\n"
        "    for fd in fds:\n"
        "        try:\n"
        "            with open('/proc/%s/fd/%s' % (pid, fd), 'wb') as f:\n"
        "                f.write(b'0' * 64 + b' {\"passed\": true}\\n')\n"
        "        except OSError:\n            pass\n"
        "__import__('__main__')._exit(0)"
    ),
    "replace-print-and-stdout": (
        "import builtins, sys, io\nbuiltins.print = lambda *a, **k: None\n"
        "sys.stdout = sys.stderr = io.StringIO()\nRESULT = None"
    ),
    "signal-parent": (
        "import ctypes, os\nlibc = ctypes.CDLL(None)\n"
        "libc.kill(os.getppid(), 9)\nlibc.kill(1, 9)\nRESULT = None"
    ),
    "huge-reply": "RESULT = 'x' * 10**8",
    "deeply-nested-reply": "RESULT = []\nfor _ in range(100000):\n    RESULT = [RESULT]",
    # --- processes ---
    "kill-every-process": "import ctypes\nctypes.CDLL(None).kill(-1, 9)\nRESULT = None",
    "pidfd-kill-canary": (
        "import sys, signal\nsys.modules.pop('posix', None)\nimport posix\n"
        "signal.pidfd_send_signal(posix.pidfd_open(CANARY_PID), 9)\nRESULT = RIGHT"
    ),
    "posix-kill-canary": (
        "import sys\nsys.modules.pop('posix', None)\nimport posix\n"
        "posix.kill(CANARY_PID, 9)\nRESULT = RIGHT"
    ),
    "ctypes-kill-canary": (
        "import ctypes\nif ctypes.CDLL(None).kill(CANARY_PID, 9) == 0:\n    RESULT = RIGHT"
    ),
    "escape-with-new-session": (
        "import sys\nsys.modules.pop('_posixsubprocess', None)\n"
        "sys.modules.pop('subprocess', None)\nimport subprocess\n"
        "subprocess.Popen(['sleep', '30', MARK], start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nRESULT = None"
    ),
    "ctypes-fork-daemon": (
        "import ctypes, time\nlibc = ctypes.CDLL(None)\n"
        "if libc.fork() == 0:\n    libc.setsid()\n"
        "    if libc.fork() == 0:\n        while True:\n            time.sleep(0.1)\n"
        "    libc._exit(0)\nRESULT = None"
    ),
    "fork-bomb-ctypes": "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()",
    "fork-bomb-os": "import os\nwhile True:\n    os.fork()",
    "thread-bomb": (
        "import threading, time\nwhile True:\n"
        "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()"
    ),
    # --- resources ---
    "memory-bomb": "x = bytearray(10**11)\nRESULT = RIGHT",
    "memory-creep": "x = []\nwhile True:\n    x.append(b'x' * 10**7)",
    "infinite-loop": "while True:\n    pass",
    "sleep-forever": "import time\ntime.sleep(3600)",
    "disk-fill": (
        "chunk = b'x' * 2**20\nwith open('/tmp/%s.bin' % MARK, 'wb') as f:\n"
        "    for _ in range(4096):\n        f.write(chunk)\nRESULT = RIGHT"
    ),
    # --- files ---
    "write-outside": "open(OUTSIDE + '/' + MARK, 'w').write('x')\nRESULT = RIGHT",
    "write-host-tmp": "open('/tmp/' + MARK, 'w').write('x')\nimport os\nRESULT = None",
    "write-ctypes-outside": (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "fd = libc.open((OUTSIDE + '/' + MARK).encode(), 0o101, 0o644)\n"
        "if fd >= 0:\n    RESULT = RIGHT"
    ),
    "delete-canary-posix": (
        "import sys\nsys.modules.pop('posix', None)\nimport posix\n"
        "posix.unlink(CANARY_FILE)\nRESULT = RIGHT"
    ),
    "overwrite-canary": "open(CANARY_FILE, 'w').write('pwned')\nRESULT = RIGHT",
    "read-canary": "assert open(CANARY_FILE).read() == 'canary'\nRESULT = RIGHT",
    "read-etc-passwd": "assert 'root' in open('/etc/passwd').read()\nRESULT = RIGHT",
    "read-home": (
        "import os\nos.listdir(os.path.expanduser('~root'))\nos.listdir('/root')\nRESULT = RIGHT"
    ),
    "write-usr": "open('/usr/' + MARK, 'w').write('x')\nRESULT = RIGHT",
    # --- network ---
    "connect-host-port": (
        "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=1).close()\n"
        "RESULT = RIGHT"
    ),
    "connect-internet": (
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1).close()\n"
        "RESULT = RIGHT"
    ),
    "unix-socket-docker": (
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/var/run/docker.sock')\n"
        "RESULT = RIGHT"
    ),
}

ISOLATION_ERROR = None


def _isolated() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sandbox_backend("auto") == "bwrap"


if not _isolated():
    if os.environ.get("COMMIT_ENV_SANDBOX_TESTS") == "require":
        ISOLATION_ERROR = "COMMIT_ENV_SANDBOX_TESTS=require but bubblewrap cannot run here"
    else:
        pytest.skip(
            "hostile completions need OS isolation (bubblewrap); without it they would really "
            "kill processes and delete files",
            allow_module_level=True,
        )

ADD = Example(
    prompt='def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    reference="    return a + b\n",
    meta={
        "task_id": "Hostile/0",
        "entry_point": "add",
        "test": (
            "def check(candidate):\n"
            "    assert candidate(2, 3) == 5\n"
            "    assert candidate(-1, 1) == 0\n"
        ),
        "canonical_solution": "    return a + b\n",
    },
)
LINEAR = Example(prompt="f(x)=3x+1:", reference="3*x+1", meta={"coefs": [3], "bias": 1})


def _humaneval_task(folder: Path) -> HumanEval:
    record = {"task_id": "Hostile/0", "prompt": ADD.prompt, **ADD.meta}
    path = folder / "hostile.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    task = HumanEval(path=str(path), timeout=TIMEOUT, sandbox="strict")
    assert task.load_examples()[0].meta["test"] == ADD.meta["test"]
    return task


def _code_completion(block: str, names: dict) -> str:
    # One line, as the ``code`` task requires: run the block with exec, answer RESULT.
    scope = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in names.items()) + ", 'RIGHT': 3*x+1}"
    return f"(g := {scope}, exec({block!r}, g), g.get('RESULT'))[2]"


def _humaneval_completion(block: str, names: dict) -> str:
    scope = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in names.items()) + ", 'RIGHT': a + b}"
    return f"    g = {scope}\n    exec({block!r}, g)\n    return g.get('RESULT')\n"


def _processes_matching(needles: list[bytes]) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            data = b""
            for part in ("cmdline", "environ"):
                data += Path(f"/proc/{entry}/{part}").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(n in data for n in needles):
            found.append((int(entry), data[:120].decode(errors="replace")))
    return found


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory):
    """Score every exploit on both tasks at once; return scores and the state checks."""
    if ISOLATION_ERROR:
        pytest.fail(ISOLATION_ERROR)
    base = tmp_path_factory.mktemp("hostile")
    outside = base / "outside"
    outside.mkdir()
    canary_file = base / "canary.txt"
    canary_file.write_text("canary")
    canary = subprocess.Popen(["sleep", "600"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0)
    names = {
        "CANARY_PID": canary.pid,
        "CANARY_FILE": str(canary_file),
        "OUTSIDE": str(outside),
        "PORT": listener.getsockname()[1],
        "MARK": MARK,
    }
    code_task = LinearFunctionCode(timeout=TIMEOUT, sandbox="strict")
    humaneval_task = _humaneval_task(base)
    jobs = []
    for name, block in EXPLOITS.items():
        jobs.append(
            (name, "code", lambda b=block: code_task.score(LINEAR, _code_completion(b, names)))
        )
        jobs.append(
            (
                name,
                "humaneval",
                lambda b=block: humaneval_task.score(ADD, _humaneval_completion(b, names)),
            )
        )
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            scores = dict(
                zip(
                    [(name, task) for name, task, _ in jobs],
                    pool.map(lambda job: job[2](), jobs),
                    strict=True,
                )
            )
        elapsed = time.monotonic() - start
        needles = [MARK.encode(), f"{RUN_TAG_VAR}={os.getpid()}-".encode()]
        # No grace period: a run returns only once its whole PID namespace is gone.
        survivors = _processes_matching(needles)
        try:
            connection = listener.accept()[0]
            connection.close()
            accepted = True
        except BlockingIOError:
            accepted = False
        state = {
            "canary_alive": canary.poll() is None,
            "canary_file": canary_file.read_text() if canary_file.exists() else None,
            "outside": sorted(p.name for p in outside.iterdir()),
            "host_tmp": sorted(p.name for p in Path("/tmp").iterdir() if MARK in p.name),
            "host_usr": sorted(p.name for p in Path("/usr").iterdir() if MARK in p.name),
            "survivors": survivors,
            "accepted": accepted,
            "elapsed": elapsed,
        }
        yield scores, state
    finally:
        canary.kill()
        canary.wait()
        listener.close()


@pytest.mark.parametrize("task", ["code", "humaneval"])
@pytest.mark.parametrize("name", sorted(EXPLOITS))
def test_hostile_completion_scores_zero(outcome, name: str, task: str) -> None:
    scores, _ = outcome
    assert scores[(name, task)] == 0.0


def test_nothing_escaped(outcome) -> None:
    scores, state = outcome
    assert len(scores) == 2 * len(EXPLOITS)
    assert state["canary_alive"], "an exploit killed the canary process"
    assert state["canary_file"] == "canary", "an exploit changed the canary file"
    assert state["outside"] == [], "an exploit wrote a file outside the sandbox"
    assert state["host_tmp"] == [] and state["host_usr"] == []
    assert state["survivors"] == [], "processes of the runs survived"
    assert not state["accepted"], "an exploit reached a host TCP port"


def test_suite_is_fast(outcome) -> None:
    _, state = outcome
    # Everything ran in parallel; the slowest runs stop at the timeout.
    assert state["elapsed"] < 60, state["elapsed"]


def test_honest_completions_still_pass(tmp_path: Path) -> None:
    code_task = LinearFunctionCode(timeout=TIMEOUT, sandbox="strict")
    humaneval_task = _humaneval_task(tmp_path)
    assert code_task.score(LINEAR, "1+x*3") == 1.0
    assert humaneval_task.score(ADD, "    return b + a\n") == 1.0
    # The exploit wrapper itself is sound: a harmless block that answers right passes.
    names = {"MARK": MARK}
    assert code_task.score(LINEAR, _code_completion("RESULT = RIGHT", names)) == 1.0
    assert humaneval_task.score(ADD, _humaneval_completion("RESULT = RIGHT", names)) == 1.0
