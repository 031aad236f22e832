#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks need, when they are missing.
# Runs as root (CI, a fresh machine) or through sudo when available.
set -euo pipefail

# libpango: WeasyPrint's text layout (the study report's PDF).
PACKAGES=(orthanc orthanc-dicomweb dcmtk postgresql chromium chromium-driver fonts-dejavu-core redis-server libpango-1.0-0 libpangoft2-1.0-0)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The Orthanc package would start a system service; the tests start their own instances.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
