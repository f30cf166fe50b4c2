#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: uv (pinned, in a project-local tool venv),
# the Python environment from uv.lock and the Kafka broker jars (Maven). Debian packages
# (redis-server; wrk for benchmarks) are installed by the code that starts them, when missing
# (streamrec_dev.servers.ensure_debian_package). Safe to re-run: done steps are skipped.
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

echo "bootstrap: python environment (.venv) from uv.lock"
"$TOOLS/bin/uv" sync --frozen --quiet

echo "bootstrap: Kafka broker jars (Maven, cached by pom.xml digest)"
.venv/bin/python -c "from streamrec_dev.servers import ensure_kafka_jars; ensure_kafka_jars()"
