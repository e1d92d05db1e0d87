#!/usr/bin/env bash
# Make sure a headless-capable Chromium is at /usr/bin/chromium (Debian's `chromium` package).
# Idempotent: does nothing when it is already there. Needs root (or sudo) and the Debian mirrors
# the first time. Exit status 0 when Chromium is usable afterwards, 1 otherwise (with a reason).
set -u

CHROMIUM="${CLSGEN_CHROMIUM:-/usr/bin/chromium}"

usable() { [ -x "$CHROMIUM" ] && "$CHROMIUM" --headless --no-sandbox --version >/dev/null 2>&1; }

if usable; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: $CHROMIUM is missing and apt-get is not available; install Chromium" \
         "by hand or set CLSGEN_CHROMIUM to its path" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure_chromium: $CHROMIUM is missing and installing it needs root" \
             "(run: apt-get update && apt-get install -y chromium)" >&2
        exit 1
    fi
fi

echo "ensure_chromium: installing Debian's chromium package (once) ..." >&2
export DEBIAN_FRONTEND=noninteractive
# A concurrent apt run holds the lock: wait for it rather than failing.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null \
    && $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null

if usable; then
    echo "ensure_chromium: $("$CHROMIUM" --version 2>/dev/null)" >&2
    exit 0
fi
echo "ensure_chromium: could not install a working $CHROMIUM (apt-get failed or the binary does" \
     "not start); see the output above" >&2
exit 1
