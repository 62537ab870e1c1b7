#!/bin/sh
# Starts as root to prepare what the REST server's user ($AIE_RUN_AS, uid:gid) needs, then runs
# the server as that user:
# - the accounts (/etc/aie/users.json, name -> password) become a bcrypt htpasswd file (the one
#   hash restic-rest-server and Debian's Python both know); the HTTPS certificate and key, the
#   pruning's settings and the repository password are copied, all private to that user;
# - the repository is handed to that user (an earlier SFTP server's files included);
# - cron runs the pruning on its schedule (/etc/aie/crontab), as that user too;
# - the shared repository of earlier releases is split into one repository per host (once).
set -eu
uid=${AIE_RUN_AS%%:*}
gid=${AIE_RUN_AS##*:}
install -d -o "$uid" -g "$gid" -m 0700 /run/aie
python3 - /etc/aie/users.json /run/aie/htpasswd <<'PY'
import json, os, sys

import bcrypt

users = json.load(open(sys.argv[1]))
with open(os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
    for name, password in sorted(users.items()):
        out.write(f"{name}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")
PY
install -o "$uid" -g "$gid" -m 0644 /etc/aie/tls/cert.pem /run/aie/cert.pem
for file in tls/key.pem backup.json restic-password; do
    install -o "$uid" -g "$gid" -m 0600 "/etc/aie/$file" "/run/aie/${file#tls/}"
done
# Each data host's repository password.
install -d -o "$uid" -g "$gid" -m 0700 /run/aie/passwords
for file in /etc/aie/passwords/*; do
    if [ -f "$file" ]; then install -o "$uid" -g "$gid" -m 0600 "$file" /run/aie/passwords/; fi
done
chown "$uid:$gid" /run/aie/htpasswd
install -d -m 0700 /repository
find /repository ! -user "$uid" -exec chown -h "$uid:$gid" {} +
# cron reads only root-owned files without group or other write access.
install -m 0644 -o root -g root /etc/aie/crontab /etc/cron.d/aie-backup-prune
cron
# Before the server answers: the snapshots of the shared repository of earlier releases go into
# each host's own, once (aie-backup split; nothing to do on a new backup host).
AIE_BACKUP_CONFIG=/run/aie/backup.json setpriv --reuid="$uid" --regid="$gid" --clear-groups aie-backup split
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
