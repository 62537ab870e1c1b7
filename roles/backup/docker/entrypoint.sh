#!/bin/sh
# Installs the schedule mounted from the controller at /etc/aie, then runs the command
# (cron in the foreground by default; `aie-backup restore ...` for a restore).
set -eu
if [ -f /etc/aie/crontab ]; then
    # cron reads only root-owned files without group or other write access.
    install -m 0644 -o root -g root /etc/aie/crontab /etc/cron.d/aie-backup
fi
# A backup killed while the object store was paused left it paused: unpause it first (a failure
# is logged, and the container starts anyway).
if [ -S /run/aie-docker/docker.sock ] && [ -f "${AIE_BACKUP_CONFIG:-/etc/aie/backup.json}" ]; then
    aie-backup resume || true
fi
# cron runs @reboot jobs only when this file is missing: each start of the container is one.
rm -f /run/crond.reboot
exec "$@"
