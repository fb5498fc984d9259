#!/usr/bin/env bash
# Installs the Debian packages that headless MuJoCo rendering needs (EGL, OSMesa) when they are
# missing and we are root. Never fails the build: without them only rendering tests are skipped.
set -u
missing=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: Debian packages missing for headless rendering: ${missing[*]} (install them as root)" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "warning: apt-get could not install ${missing[*]}" >&2
exit 0
