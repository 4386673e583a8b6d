"""Guard tests that keep the package's layout as the README's "The pieces" section draws it.

asiarch/store/ is the only code that speaks SQL: no module outside it runs a statement,
touches a store's connection or imports sqlite3. Anything the rest of the package needs
from the database is a Store method (asiarch/store/store.py) or a read-only query
(asiarch/store/queries.py).

asiarch/cli/ is the only head-side code that prints (with asiarch/tools/, the benchmarks and
importers behind `asiarch bench` and `asiarch import-asi-arch`, and the job side's entry points,
whose output is their log or their protocol): the library returns text. And the front end
depends on the engine, never the other way: no engine module imports asiarch.cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asiarch"
STORE = PACKAGE / "store"

SQL_CALLS = {"execute", "executemany", "executescript"}

# Calls named like SQL that are not SQL, each with its reason: (file, the called expression).
NOT_SQL = {
    # spython's Client.execute runs a command inside an Apptainer image.
    ("asiarch/dispatch/container.py", "client.execute"),
}


def sql_uses(path: Path, rel: str) -> list[tuple[int, str]]:
    """(line, what) for every SQL call, ``.conn`` access and sqlite3 import in the module at
    ``path``, which NOT_SQL knows as ``rel`` (its path from the repository root)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out, receivers = [], set()
    for node in ast.walk(tree):  # breadth first: a call is seen before the ``x.conn`` it is made on
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            called = ast.unparse(node.func)
            if (rel, called) not in NOT_SQL:
                out.append((node.lineno, f"{called}(...)"))
                receivers.add(id(node.func.value))
        elif isinstance(node, ast.Attribute) and node.attr == "conn" and id(node) not in receivers:
            out.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Import) and any(a.name == "sqlite3" for a in node.names):
            out.append((node.lineno, "import sqlite3"))
        elif isinstance(node, ast.ImportFrom) and node.module == "sqlite3":
            out.append((node.lineno, "from sqlite3 import ..."))
    return sorted(out)


def test_sql_only_in_the_store():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if STORE in path.parents:
            continue
        rel = path.relative_to(ROOT).as_posix()
        offenders += [f"{rel}:{line}: {what}" for line, what in sql_uses(path, rel)]
    assert not offenders, ("SQL outside asiarch/store/ (make it a Store method or a query in "
                           "asiarch/store/queries.py):\n  " + "\n  ".join(offenders))


def test_the_guard_sees_sql_and_its_exceptions_still_exist(tmp_path):
    """The check finds each form it forbids, and every NOT_SQL entry still names a real call
    (a stale entry would hide a future offender in that file)."""
    probe = tmp_path / "probe.py"
    probe.write_text("import sqlite3\nfrom sqlite3 import Row\n"
                     "def f(store, c, client):\n    store.conn.execute('SELECT 1')\n    c.executemany('x', [])\n"
                     "    c.executescript('x')\n    client.execute('image', ['python'])\n    return store.conn\n")
    found = [what for _, what in sql_uses(probe, "asiarch/dispatch/other.py")]
    assert found == ["import sqlite3", "from sqlite3 import ...", "store.conn.execute(...)",
                     "c.executemany(...)", "c.executescript(...)", "client.execute(...)", "store.conn"]
    # The same call in the one file where it is known not to be SQL passes.
    assert "client.execute(...)" not in [w for _, w in sql_uses(probe, "asiarch/dispatch/container.py")]
    for rel, called in NOT_SQL:
        tree = ast.parse((ROOT / rel).read_text())
        calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert called in calls, f"{rel} no longer calls {called}: drop it from NOT_SQL"


# ---------------------------------------------------------------------- printing

# Where printing belongs: the front end and the tools it runs.
PRINTING_PACKAGES = ("asiarch/cli/", "asiarch/tools/")
# The job side's entry points, which print by design, each with its reason.
JOB_ENTRY_POINTS = {
    "asiarch/job/train.py": "the training job under torchrun: what it prints is the attempt's job.log",
    "asiarch/job/preflight.py": "the pre-flight child's CLI: progress lines on stderr and the JSON report on "
                                "stdout are how the head's runner (asiarch/search/preflight.py) reads it",
    "asiarch/job/ops/bench.py": "`python -m asiarch.job.ops.bench` (run by `asiarch bench kernels`): its main "
                                "prints the throughput table",
}
STD_STREAMS = {"stdout", "stderr", "__stdout__", "__stderr__"}


def prints(path: Path) -> list[tuple[int, str]]:
    """(line, what) for every way the module at ``path`` reaches the process's output: the builtin
    ``print`` (called, or passed on as a value, e.g. ``out=print``), ``sys.stdout`` / ``sys.stderr``
    (``.write`` or held), and ``from sys import stdout``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "print" and isinstance(node.ctx, ast.Load):
            out.append((node.lineno, "print(...)" if id(node) in called else "print"))
        elif (isinstance(node, ast.Attribute) and node.attr in STD_STREAMS and isinstance(node.value, ast.Name)
              and node.value.id == "sys"):
            out.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and STD_STREAMS & {a.name for a in node.names}:
            out.append((node.lineno, "from sys import " + ", ".join(a.name for a in node.names)))
    return sorted(out)


def test_printing_only_in_the_front_end_and_the_job_entry_points():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(PRINTING_PACKAGES) or rel in JOB_ENTRY_POINTS:
            continue
        offenders += [f"{rel}:{line}: {what}" for line, what in prints(path)]
    assert not offenders, ("printing outside asiarch/cli/, asiarch/tools/ and the job entry points (return the "
                           "text, or write to a stream the caller passes, and let an asiarch/cli handler print "
                           "it):\n  " + "\n  ".join(offenders))


def test_the_print_guard_sees_each_form_and_its_exceptions_still_print(tmp_path):
    """The check finds each form it forbids in a probe module, and every JOB_ENTRY_POINTS entry
    still prints (a stale entry would hide a future offender in that file)."""
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nfrom sys import stderr\n"
                     "def f(text, out=print):\n    print(text)\n    sys.stdout.write(text)\n"
                     "    sys.stderr.write(text)\n    return sys.__stdout__\n"
                     "def g(stream):\n    stream.write('fine: the caller chose the stream')\n")
    assert [what for _, what in prints(probe)] == ["from sys import stderr", "print", "print(...)", "sys.stdout",
                                                   "sys.stderr", "sys.__stdout__"]
    assert prints(ROOT / "asiarch/dispatch/container.py") == []  # a print inside a string runs in the image
    for rel in JOB_ENTRY_POINTS:
        assert prints(ROOT / rel), f"{rel} no longer prints: drop it from JOB_ENTRY_POINTS"


# ---------------------------------------------------------------------- the front end depends on the engine

# The engine: what a library caller (a notebook, a test, another front end) uses without the CLI.
ENGINE = ("asiarch/store/", "asiarch/search/", "asiarch/propose/", "asiarch/dispatch/", "asiarch/analysis/",
          "asiarch/job/", "asiarch/config.py", "asiarch/layout.py")


def imported_modules(path: Path, rel: str) -> list[tuple[int, str]]:
    """(line, module) for every import in the module at ``path`` (``rel``: its path from the repository
    root), relative imports resolved; ``from P import x`` counts as importing P and P.x."""
    package = rel.split("/")[:-1]  # the package a relative import starts from (an __init__'s own)
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out += [(node.lineno, module)] + [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def cli_imports(path: Path, rel: str) -> list[str]:
    return sorted({f"{line}: {module}" for line, module in imported_modules(path, rel)
                   if module == "asiarch.cli" or module.startswith("asiarch.cli.")})


def test_the_engine_never_imports_the_front_end():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(ENGINE):
            offenders += [f"{rel}:{hit}" for hit in cli_imports(path, rel)]
    assert not offenders, ("an engine module imports asiarch.cli (the front end depends on the engine, not the "
                           "other way: move what both need out of asiarch/cli, as asiarch/analysis/palette.py was):"
                           "\n  " + "\n  ".join(offenders))


def test_the_import_guard_sees_absolute_relative_and_late_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import asiarch.cli.console\nfrom asiarch import cli\nfrom ..cli.color import emit\n"
                     "from asiarch.client import x\nfrom . import ingest\n"
                     "def f():\n    from asiarch.cli.main import main\n")
    assert cli_imports(probe, "asiarch/search/probe.py") == [
        "1: asiarch.cli.console", "2: asiarch.cli", "3: asiarch.cli.color", "3: asiarch.cli.color.emit",
        "7: asiarch.cli.main", "7: asiarch.cli.main.main"]
