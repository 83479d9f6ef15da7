#!/usr/bin/env bash
# Installs greenservers as a systemd service, from the checkout this script is in:
#   - the system user `greenservers` (no login, no home of its own),
#   - the code in /opt/greenservers, root's and read-only to the service,
#   - a virtual environment in /opt/greenservers/.venv made with the distribution's
#     Python (/usr/bin/python3 and python3-venv): a python3 that lives in root's home
#     (pyenv) cannot be run by the service user,
#   - the data folder /var/lib/greenservers, the service user's, mode 0700 (the
#     configuration file, the data and the certificate are made there at first start),
#   - deploy/greenservers.service in /etc/systemd/system, enabled and (re)started.
# Run it again after an update of the checkout: it installs the new code and restarts.
#
#   sudo deploy/install.sh
#
# ROOT=DIR deploy/install.sh installs under DIR instead of / (the user in DIR/etc/passwd,
# the paths in the unit rewritten to DIR/...) and leaves systemd alone: how the tests run
# every step in a private folder.
set -euo pipefail

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${ROOT:-}
SERVICE_USER=greenservers
PREFIX=$ROOT/opt/greenservers
STATE_DIR=$ROOT/var/lib/greenservers
UNIT_DIR=$ROOT/etc/systemd/system
PYTHON=/usr/bin/python3

say() { echo "install.sh: $*"; }
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo $0)" >&2; exit 1; }
umask 022  # the code is readable by the service user; its data folder is made 0700 below

# the distribution's Python with venv and ensurepip
if ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
  [ -z "$ROOT" ] || { echo "install.sh: $PYTHON has no venv module: apt-get install python3-venv" >&2; exit 1; }
  say "installing python3-venv"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

# the user
if [ -n "$ROOT" ]; then
  user_entry() { grep "^$SERVICE_USER:" "$ROOT/etc/passwd" || true; }
  useradd_root=(--prefix "$ROOT")
else
  user_entry() { getent passwd "$SERVICE_USER" || true; }
  useradd_root=()
fi
if [ -z "$(user_entry)" ]; then
  say "adding the system user $SERVICE_USER"
  useradd "${useradd_root[@]}" --system --user-group --home-dir /var/lib/greenservers --no-create-home \
    --shell /usr/sbin/nologin --comment "greenservers phone-system network services" "$SERVICE_USER"
fi
uid=$(user_entry | cut -d: -f3)
gid=$(user_entry | cut -d: -f4)

# the code
install -d -m 0755 "$PREFIX"
if [ "$SOURCE" != "$(cd "$PREFIX" && pwd)" ]; then
  say "copying the code to $PREFIX"
  rm -rf "$PREFIX/greenservers"
  tar -C "$SOURCE" --exclude=__pycache__ -cf - pyproject.toml app.py gunicorn.conf.py README.md greenservers deploy \
    | tar -C "$PREFIX" --no-same-owner -xf -
fi

# the virtual environment, made with the distribution's Python
if [ "$(readlink -f "$PREFIX/.venv/bin/python" 2>/dev/null)" != "$(readlink -f "$PYTHON")" ]; then
  say "making the virtual environment $PREFIX/.venv with $PYTHON"
  rm -rf "$PREFIX/.venv"
  "$PYTHON" -m venv "$PREFIX/.venv"
fi
say "installing greenservers and its dependencies into $PREFIX/.venv"
"$PREFIX/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$PREFIX"
"$PREFIX/.venv/bin/python" -m compileall -q "$PREFIX/greenservers" "$PREFIX/app.py" "$PREFIX/gunicorn.conf.py"

# the data folder: the service user's only
install -d -m 0700 -o "$uid" -g "$gid" "$STATE_DIR"

# the unit, its paths following ROOT
install -d -m 0755 "$UNIT_DIR"
sed -e "s#/opt/greenservers#$PREFIX#g" -e "s#/var/lib/greenservers#$STATE_DIR#g" \
  "$SOURCE/deploy/greenservers.service" > "$UNIT_DIR/greenservers.service.new"
chmod 0644 "$UNIT_DIR/greenservers.service.new"
mv "$UNIT_DIR/greenservers.service.new" "$UNIT_DIR/greenservers.service"

config=$STATE_DIR/greenservers.toml
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --quiet greenservers
  systemctl restart greenservers
  say "greenservers is running: journalctl -u greenservers shows the admin page's address"
else
  say "installed under ${ROOT:-/}; systemd is not running here, so nothing was started"
fi
say "set the admin password: sudo $PREFIX/.venv/bin/python -m greenservers --config $config passwd"
