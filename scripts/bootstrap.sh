#!/usr/bin/env bash
# Install the control host's dependencies: Debian packages and a virtualenv.
# Idempotent and quick when nothing changed (a stamp holds the inputs' hash).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

APT_PACKAGES=(
  # container lab (Podman path; Docker is used instead when its daemon answers)
  podman crun runc containernetworking-plugins netavark aardvark-dns uidmap
  fuse-overlayfs debootstrap iptables
  # control host tools: ssh client for Ansible/pyinfra, local PostgreSQL 15 for
  # data tests and benchmarks, pgbench, psql
  openssh-client postgresql-15 postgresql-client-15 postgresql-15-partman postgresql-15-cron
  # HypoPG: the load report's index advice (hypothetical indexes) on the local test server
  postgresql-15-hypopg
  python3 python3-venv make git ca-certificates curl
  # monitoring: promtool checks and unit-tests the alert rules; pgbadger writes query reports
  prometheus pgbadger
  # backups: the loopback PITR tests and the backup bench run a real pgBackRest (no service is started)
  pgbackrest
  # pooling: the loopback switchover tests run a real PgBouncer 1.18 (its own service stays off)
  pgbouncer
)

stamp_dir=".lab"
mkdir -p "$stamp_dir"
inputs_hash="$( (printf '%s\n' "${APT_PACKAGES[@]}"; cat pyproject.toml scripts/bootstrap.sh) | sha256sum | cut -c1-16)"
if [[ -f "$stamp_dir/bootstrap.$inputs_hash" && -x .venv/bin/careflow-ha ]]; then
  exit 0
fi

if [[ $EUID -ne 0 ]]; then
  echo "careflow-ha: installing packages needs root. Re-run as root (sudo $0 ...)." >&2
  exit 3
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> apt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian creates and starts a default cluster; the lab's local server is
  # started by the tests themselves, so keep the distro one out of the way.
  if command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main'; then
    pg_ctlcluster 15 main stop 2>/dev/null || true
  fi
  # Only promtool is wanted here. Where systemd is PID 1 the package starts a
  # Prometheus server on every interface (:9090); stop and disable the one we
  # just installed (never one that was already there).
  if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "==> python: creating .venv"
  python3 -m venv .venv
fi
echo "==> python: installing careflow-ha and pinned dependencies into .venv"
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
rm -f "$stamp_dir"/bootstrap.*
touch "$stamp_dir/bootstrap.$inputs_hash"
