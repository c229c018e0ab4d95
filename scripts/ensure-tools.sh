#!/bin/sh
# Install the named command-line tools with apt-get when they are missing.
# Usage: ensure-tools.sh TOOL...   (tool names are commands; the Debian package is looked up below)
set -eu
missing=""
for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 && continue
    case "$tool" in
        ffmpeg|ffprobe) pkg=ffmpeg ;;
        go) pkg=golang-go ;;
        nginx) pkg=nginx-light ;;
        node) pkg=nodejs ;;
        cc) pkg=gcc ;;
        *) pkg=$tool ;;
    esac
    missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing tools:$missing (install them, or run as root on Debian/Ubuntu to install them automatically)" >&2
    exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
