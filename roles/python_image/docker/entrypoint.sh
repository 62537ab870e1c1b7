#!/bin/sh
# Starts as root: installs the ssh material from /etc/aie/ssh (mounted read-only) into the
# home of the user the service runs as, then drops to that user. The user is the owner of
# $AIE_RUN_AS_OWNER_OF when set (so notebooks keep their owner on the host), else root.
set -eu
uid=0
gid=0
if [ -n "${AIE_RUN_AS_OWNER_OF:-}" ]; then
    uid=$(stat -c %u "$AIE_RUN_AS_OWNER_OF")
    gid=$(stat -c %g "$AIE_RUN_AS_OWNER_OF")
fi
if [ "$uid" = 0 ]; then
    HOME=/root
else
    HOME=/home/aie
    install -d -o "$uid" -g "$gid" -m 0755 "$HOME"
fi
export HOME
if [ -d /etc/aie/ssh ]; then
    install -d -o "$uid" -g "$gid" -m 0700 "$HOME/.ssh"
    for file in /etc/aie/ssh/*; do
        install -o "$uid" -g "$gid" -m 0600 "$file" "$HOME/.ssh/"
    done
fi
if [ "$uid" = 0 ]; then
    exec "$@"
fi
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
