#!/usr/bin/env bash
# The whole check: lint, format, types, then every test (unit, integration against real Kafka,
# Redis and PostgreSQL started by the fixtures, end-to-end). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh || exit 1

status=0
echo "== ruff"; .venv/bin/ruff check . || status=1
.venv/bin/ruff format --check . || status=1
echo "== mypy"; .venv/bin/mypy || status=1

echo "== k8s manifests"; scripts/k8s_check.sh || status=1
echo "== pytest"
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here, not a pass"
  rc=1
fi
[ $rc -eq 0 ] || status=1
exit $status
