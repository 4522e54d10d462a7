#!/bin/sh
# deps.sh ITEM...: make sure what a build or test needs is installed. An item
# is a Debian package name, or COMMAND:PACKAGE, which is satisfied when
# COMMAND is on the PATH however it was installed (Node.js often comes from
# outside Debian). As root the missing packages are installed with apt-get;
# otherwise the exact command to run is printed and deps.sh fails, so nothing
# is half set up.
missing=""
for item in "$@"; do
    case "$item" in
    *:*) command -v "${item%%:*}" >/dev/null 2>&1 && continue; p=${item#*:} ;;
    *) p=$item ;;
    esac
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
