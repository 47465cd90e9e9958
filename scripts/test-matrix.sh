#!/usr/bin/env bash
# `make test-matrix`: the suite on SQLite for one Python and one locked set, in its own venv.
#
#   scripts/test-matrix.sh PYTHON_MINOR LOCKED_SET DJANGO_SERIES [pytest args...]
#   e.g. scripts/test-matrix.sh 3.13 django60 6.0
#
# The venv (.venv-py<minor>-<set>) is installed like .venv: the locked set with its hashes
# first, then the project without dependencies. It is reinstalled when the set changes.
# pythonX.Y may be a pyenv shim, which runs only with PYENV_VERSION set: the newest
# installed X.Y.* is chosen. Bench, stress, browser and packaging tests are left to `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

minor="$1" set="$2" series="$3"
shift 3
requirements="requirements/$set.txt"
venv=".venv-py$minor-$set"
[ -f "$requirements" ] || { echo "test-matrix: no locked set $requirements (make lock)" >&2; exit 2; }

if command -v pyenv >/dev/null && [[ "${PYENV_VERSION:-}" != "$minor".* ]]; then
    PYENV_VERSION="$(pyenv versions --bare --skip-aliases | grep -E "^${minor//./\\.}\.[0-9]+$" | sort -V | tail -1 || true)"
    [ -n "$PYENV_VERSION" ] && export PYENV_VERSION
fi
python="python$minor"
if ! "$python" -c 'import sys' 2>/dev/null; then
    echo "test-matrix: $python not found (install Python $minor; with pyenv: pyenv install $minor)" >&2
    exit 2
fi

if [ ! -f "$venv/.installed" ] || [ "$requirements" -nt "$venv/.installed" ]; then
    echo "=== $venv: installing $requirements ==="
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet --require-hashes -r "$requirements"
    "$venv/bin/pip" install --quiet --no-deps -e .
    touch "$venv/.installed"
elif [ pyproject.toml -nt "$venv/.installed" ]; then
    "$venv/bin/pip" install --quiet --no-deps -e .  # the project's own metadata changed
    touch "$venv/.installed"
fi

# The venv must be what the entry says: the wrong Python or Django would pass for nothing.
"$venv/bin/python" - "$minor" "$series" <<'PY'
import sys

import django

minor, series = sys.argv[1], sys.argv[2]
got = (f"{sys.version_info[0]}.{sys.version_info[1]}", ".".join(map(str, django.VERSION[:2])))
if got != (minor, series):
    sys.exit(f"test-matrix: expected Python {minor} + Django {series}, the venv has Python {got[0]} + Django {got[1]}")
print(f"=== test suite on SQLite, Python {sys.version.split()[0]}, Django {django.get_version()} ===")
PY

mkdir -p var
database="var/controlplane-test-py$minor-$set.sqlite3"
DEBUG=1 DATABASE_URL="sqlite:///$PWD/$database" "$venv/bin/pytest" -p no:cacheprovider \
    -m "not bench and not stress and not browser and not packaging" "$@"
