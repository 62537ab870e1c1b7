#!/bin/sh
# Runs as the REST server's user, with no capability: the service role prepared its config (the
# config volume at /etc/aie, the user's, files 0400) and handed it the repository beforehand, as
# root, in a one-off container (roles/service/files/prepare.sh). Before the server starts:
# - the accounts (/etc/aie/users.json, name -> password) become a bcrypt htpasswd file in the
#   user's home, a tmpfs (the one hash restic-rest-server and Debian's Python both know);
# - the shared repository of earlier releases is split into one repository per host (once);
# - the pruning runs on its schedule (aie-backup prune-on-schedule; cron would need root).
set -eu
export AIE_BACKUP_CONFIG=/etc/aie/backup.json
python3 - /etc/aie/users.json "$HOME/htpasswd" <<'PY'
import json, os, sys

import bcrypt

users = json.load(open(sys.argv[1]))
with open(os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
    for name, password in sorted(users.items()):
        out.write(f"{name}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")
PY
# Before the server answers: the snapshots of the shared repository of earlier releases go into
# each host's own, once (aie-backup split; nothing to do on a new backup host).
aie-backup split
aie-backup prune-on-schedule &
exec "$@"
