#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: uv (pinned, in a project-local tool venv),
# the Python environment from uv.lock, the Kafka broker jars (Maven) and Debian's redis-server and
# postgresql. Safe to re-run: each step is skipped when already done.
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

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "bootstrap: Kafka broker jars (Maven, cached by pom.xml digest)"
.venv/bin/python -c "from streamrec_dev.servers import ensure_kafka_jars; ensure_kafka_jars()"
