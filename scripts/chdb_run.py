#!/usr/bin/env python3
"""Runs SQL statements on a current ClickHouse engine (chdb-core, in-process) and prints
what each one returned, so tests and people can check that SQL written for the old test
server (Debian's ClickHouse 18.16) is also valid, and behaves the same, on current
ClickHouse. chdb cannot serve HTTP, so this is the way to reach it.

Invoked as (the venv is made by scripts/install-test-services.sh):

    $REFERRAL_TEST_VENV/bin/python scripts/chdb_run.py < statements.json

(REFERRAL_TEST_VENV defaults to ~/.cache/referral-attribution/venv.)

Input on stdin, a JSON document:

    {"statements": [{"sql": "CREATE TABLE ..."}, {"sql": "SELECT ..."}]}

(a statement may also be given as a plain string). The statements run in order in one fresh
chdb session whose data lives in a temporary directory, so tables persist from one
statement to the next; the directory is removed at the end.

Output on stdout, a JSON array with one entry per statement, in order, one entry per line:

    {"ok": true, "rows": [{"k": "a", "v": 3}]}
    {"ok": false, "error": "Code: 62. DB::Exception: Syntax error ..."}

Every statement runs with JSONEachRow as its output format (the same as appending
`FORMAT JSONEachRow` to a SELECT without a FORMAT clause, and it covers WITH, SHOW and
DESCRIBE too), and `rows` is that output parsed. DDL and INSERT give `rows: []`. A statement
with its own FORMAT clause whose output is not JSONEachRow gives `rows: []` plus `output`,
the raw text. A failing statement does not stop the ones after it.

Exit status: 0 when the input was read (whatever the statements did), 2 when the input is
not such a JSON document, 3 when chdb cannot be imported.
"""

import json
import shutil
import sys
import tempfile


def fail(message):
    print(f"chdb_run.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_statements():
    try:
        document = json.load(sys.stdin)
    except (ValueError, UnicodeDecodeError) as error:
        fail(f"stdin is not JSON: {error}")
    statements = document.get("statements") if isinstance(document, dict) else None
    if not isinstance(statements, list):
        fail('expected {"statements": [{"sql": "..."}, ...]} on stdin')
    sqls = []
    for index, statement in enumerate(statements):
        sql = statement.get("sql") if isinstance(statement, dict) else statement
        if not isinstance(sql, str):
            fail(f'statement {index} has no "sql" string')
        sqls.append(sql)
    return sqls


def parse_rows(text):
    """The rows of a JSONEachRow output, or None when the text is not JSONEachRow."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if not isinstance(row, dict):
            return None
        rows.append(row)
    return rows


def run(session, sql):
    try:
        result = session.query(sql, "JSONEachRow")
    except Exception as error:  # chdb raises its own error types; report any of them
        return {"ok": False, "error": str(error).strip()}
    text = result.bytes().decode("utf-8", errors="replace")
    rows = parse_rows(text)
    if rows is None:
        return {"ok": True, "rows": [], "output": text}
    return {"ok": True, "rows": rows}


def main():
    sqls = read_statements()
    try:
        from chdb import session as chdb_session
    except ImportError as error:
        print(f"chdb_run.py: cannot import chdb ({error}); run scripts/install-test-services.sh "
              "and use the venv's python", file=sys.stderr)
        return 3
    directory = tempfile.mkdtemp(prefix="chdb-run-")
    try:
        session = chdb_session.Session(directory)
        try:
            results = [run(session, sql) for sql in sqls]
        finally:
            session.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    lines = ",\n".join(json.dumps(result) for result in results)
    sys.stdout.write(f"[\n{lines}\n]\n" if results else "[]\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
