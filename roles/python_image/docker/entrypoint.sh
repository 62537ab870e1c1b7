#!/bin/sh
# Starts as root to prepare what the service's user needs, then drops to that user:
# - the config mounted read-only from the controller at /etc/aie.host is copied to /etc/aie,
#   owned by the user and private to it (the folder on the host is root's, mode 0700);
# - the ssh material from /etc/aie/ssh, and what /etc/aie/home holds (clients' credentials files:
#   .aws/credentials for boto3, .mlflow/credentials for MLflow's client), go to the user's home;
# - each file /etc/aie/env/NAME becomes the variable NAME of the service's environment: the
#   secrets of programs that read them only from their environment (MLflow's Flask key and
#   passphrase), which so stay out of the container's configuration (`docker inspect`);
# - every file of /etc/aie is left readable by the user only (0400);
# - the data folders named in $AIE_OWNED (space-separated) are handed to the user, so that
#   data written by an earlier root-run server (or restored from its backups) stays writable.
# The user is the owner of $AIE_RUN_AS_OWNER_OF when set and not root (so notebooks keep their
# owner on the host), else $AIE_RUN_AS (uid:gid), else root. A folder of root's (a Linux host
# operated as root; Docker Desktop's file sharing, which shows every bind mount as root's) is
# never a reason to run as root: $AIE_RUN_AS runs, and is given write access to it with an ACL
# where it lacks it (the folder keeps its owner and mode).
set -eu
uid=0
gid=0
grant=
if [ -n "${AIE_RUN_AS_OWNER_OF:-}" ]; then
    uid=$(stat -c %u "$AIE_RUN_AS_OWNER_OF")
    gid=$(stat -c %g "$AIE_RUN_AS_OWNER_OF")
fi
if [ "$uid" = 0 ] && [ -n "${AIE_RUN_AS:-}" ]; then
    uid=${AIE_RUN_AS%%:*}
    gid=${AIE_RUN_AS##*:}
    grant=${AIE_RUN_AS_OWNER_OF:-}
fi
if [ -n "$grant" ] && ! setpriv --reuid="$uid" --regid="$gid" --clear-groups test -w "$grant"; then
    # rwX: files readable and writable, folders also searchable; d: the same for what is made there.
    setfacl -R -m "u:$uid:rwX" -m "d:u:$uid:rwX" "$grant" \
        || echo "entrypoint: cannot give uid $uid write access to $grant (no ACLs there?): notebooks cannot be saved" >&2
fi
if [ "$uid" = 0 ]; then
    HOME=/root
else
    HOME=/home/aie
    install -d -o "$uid" -g "$gid" -m 0755 "$HOME"
    # The image lists no name for this uid: programs that ask who they run as (getpass, as
    # paramiko does to read an ssh config) find it here, and, where the root file system is
    # writable, in /etc/passwd too, where `docker exec -u aie` finds the user and its home.
    USER=aie
    LOGNAME=aie
    export USER LOGNAME
    if [ -w /etc/passwd ] && ! getent passwd "$uid" >/dev/null; then
        echo "aie:x:$uid:$gid:aie:$HOME:/bin/sh" >>/etc/passwd
    fi
fi
export HOME
if [ -d /etc/aie.host ]; then
    # Emptied rather than removed: on a read-only root file system /etc/aie is a tmpfs mount.
    install -d /etc/aie
    find /etc/aie -mindepth 1 -delete
    cp -R /etc/aie.host/. /etc/aie/
    chown -R "$uid:$gid" /etc/aie
    chmod -R go-rwx /etc/aie
    find /etc/aie -type f -exec chmod 0400 {} +
fi
if [ -d /etc/aie/ssh ]; then
    install -d -o "$uid" -g "$gid" -m 0700 "$HOME/.ssh"
    for file in /etc/aie/ssh/*; do
        install -o "$uid" -g "$gid" -m 0400 "$file" "$HOME/.ssh/"
    done
fi
if [ -d /etc/aie/home ]; then
    cp -R /etc/aie/home/. "$HOME/"
    (cd /etc/aie/home && find . -mindepth 1) | while read -r name; do
        chown -h "$uid:$gid" "$HOME/$name"
    done
fi
if [ -d /etc/aie/env ]; then
    for file in /etc/aie/env/*; do
        [ -f "$file" ] || continue
        name=${file##*/}
        value=$(cat "$file")
        export "$name=$value"
    done
fi
for folder in ${AIE_OWNED:-}; do
    find "$folder" ! -user "$uid" -exec chown -h "$uid:$gid" {} +
done
if [ "$uid" = 0 ]; then
    exec "$@"
fi
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
