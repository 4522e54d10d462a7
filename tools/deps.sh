#!/bin/sh
# deps.sh PKG...: make sure the Debian packages a build or test needs are
# installed. As root it installs the missing ones with apt-get; otherwise it
# prints the exact command to run and fails, so nothing is half-set-up.
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "tutti: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing || {
        echo "tutti: apt-get failed; install these packages and retry:$missing" >&2
        exit 1
    }
else
    echo "tutti: missing Debian packages. Run:" >&2
    echo "  sudo apt-get install -y$missing" >&2
    exit 1
fi
