#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: uv (pinned, in a project-local tool venv),
# the Python environment from the lock requirements/dev.txt and the Kafka broker jars (Maven).
# Debian packages (redis-server; wrk for benchmarks) are installed by the code that starts them,
# when missing (streamrec_dev.servers.ensure_debian_package). Safe to re-run: done steps are
# skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
TOOLS=.cache/tools

if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "bootstrap: installing uv $UV_VERSION into $TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_NATIVE_TLS=1  # use the system's CA bundle, as pip does here

# The environment: exactly the dev lock (every version and hash pinned: scripts/lock.sh), then the
# workspace members editable (imported from this checkout) without dependencies, which the lock
# already has. `pip sync` removes what the lock does not list, the members included, hence this
# order. The stamp holds the digest of what the environment was installed from: unchanged, the
# re-run does nothing.
#
# Bytecode is compiled at install (as the images do, UV_COMPILE_BYTECODE): uv does not by default,
# and where PYTHONDONTWRITEBYTECODE is set (this machine sets it) Python never writes the .pyc it
# compiles, so every process compiled every module it imports from source, every time. Session 21:
# `import tensorflow` 10.3 -> 4.3 s, the evaluation stack's 11 services ready in 28.5 -> 11.0 s.
# "bytecode" is part of the stamp so that an environment installed before is synced (compiled) once.
LOCK=requirements/dev.txt
MEMBERS=(shared services/ingest services/trainer services/inference services/gateway devtools)
STAMP=.venv/.streamrec-installed
digest=$( { cat "$LOCK" "${MEMBERS[@]/%//pyproject.toml}"; echo "${MEMBERS[*]} bytecode"; } | sha256sum)
if [ ! -x .venv/bin/python ]; then
  # The machine's Python 3.11: uv must not try to download one (only the registries are reachable).
  UV_PYTHON_DOWNLOADS=never "$TOOLS/bin/uv" venv --quiet --python 3.11 --prompt streamrec .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" = "$digest" ]; then
  echo "bootstrap: python environment (.venv) up to date with $LOCK"
else
  echo "bootstrap: python environment (.venv) from $LOCK"
  "$TOOLS/bin/uv" pip sync --quiet --compile-bytecode --python .venv/bin/python \
    --require-hashes "$LOCK"
  "$TOOLS/bin/uv" pip install --quiet --compile-bytecode --python .venv/bin/python --no-deps \
    "${MEMBERS[@]/#/--editable=}"
  echo "$digest" > "$STAMP"
fi
# The members are editable (imported from this checkout), so theirs too: only what changed since
# the last run is compiled (a fraction of a second). Not fatal: a file that does not compile is
# named here and reported by ruff and the tests, which run anyway.
.venv/bin/python -m compileall -q -j 0 "${MEMBERS[@]}" benchmarks \
  || echo "bootstrap: a source above does not compile (ruff and the tests report it too)"

echo "bootstrap: Kafka broker jars (Maven, cached by pom.xml digest)"
.venv/bin/python -c "from streamrec_dev.servers import ensure_kafka_jars; ensure_kafka_jars()"
