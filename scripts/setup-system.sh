#!/usr/bin/env bash
# Installs the Debian packages bnpipe needs, where apt is available and they are missing:
# the Fashion-MNIST data set, and headless Chromium + ChromeDriver for the browser test.
set -euo pipefail
packages=(dataset-fashion-mnist chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: apt-get not found; install ${missing[*]} by hand (Fashion-MNIST: or set BNPIPE_FASHION_MNIST_DIR)" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
