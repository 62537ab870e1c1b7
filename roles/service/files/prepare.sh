#!/bin/sh
# Run by prepare.yml as root in a one-off container of the service's image, with CHOWN,
# DAC_OVERRIDE and FOWNER only and no network, so that the service's own container runs as its
# user ($AIE_USER, uid:gid) with no capability at all:
# - the config folder written by Ansible (/etc/aie.host, read-only) is copied into the config
#   volume (/etc/aie, mounted read-only in the service's container), owned by the user, folders
#   0700 and files 0400;
# - the data folders named in $AIE_OWNED (space-separated) are handed to the user: what a server
#   of an earlier release wrote as root, or what a restore brought back, stays writable;
# - the folders named in $AIE_GRANT (a bind-mounted folder of root's: notebooks on a host operated
#   as root) give the user write access with an ACL; they keep their owner and mode.
# - with $AIE_MIN_FREE (a percentage) above 0, a data folder whose filesystem has that share free
#   or less stops it, the folder and its free space named, before anything changed: the service
#   would stop on it (Ceph's monitor stops at 5%), and the deployment would only wait for it.
# It prints "changed" when it changed anything, for the task's report.
set -eu
uid=${AIE_USER%%:*}
gid=${AIE_USER##*:}
changed=
for folder in ${AIE_OWNED:-}; do
    [ "${AIE_MIN_FREE:-0}" -gt 0 ] || break
    # POSIX df: the size and the available 1024-byte blocks, on its second line.
    blocks=$(df -Pk "$folder" | awk 'NR == 2 {print $2, $4}')
    size=${blocks% *}
    avail=${blocks#* }
    if [ $((avail * 100 / size)) -le "$AIE_MIN_FREE" ]; then
        echo "prepare: the filesystem of $folder has $((avail * 100 / size))% free ($((avail / 1024)) MiB of" \
             "$((size / 1024)) MiB), and this service stops at $AIE_MIN_FREE% or less. Free space where Docker" \
             "keeps its volumes (docker system df), then run aie up again" >&2
        exit 3
    fi
done
# Anything of the copy not as it should be: a file that differs, or an owner or mode.
if ! diff -r /etc/aie.host /etc/aie >/dev/null 2>&1 \
    || [ -n "$(find /etc/aie \( ! -user "$uid" -o ! -group "$gid" -o -type d ! -perm 0700 \
                                -o -type f ! -perm 0400 \) -print -quit)" ]; then
    find /etc/aie -mindepth 1 -delete
    cp -R /etc/aie.host/. /etc/aie/
    chown -R "$uid:$gid" /etc/aie
    find /etc/aie -type d -exec chmod 0700 {} +
    find /etc/aie -type f -exec chmod 0400 {} +
    changed=1
fi
for folder in ${AIE_OWNED:-}; do
    if [ -n "$(find "$folder" \( ! -user "$uid" -o ! -group "$gid" \) -print -quit)" ]; then
        find "$folder" \( ! -user "$uid" -o ! -group "$gid" \) -exec chown -h "$uid:$gid" {} +
        changed=1
    fi
done
for folder in ${AIE_GRANT:-}; do
    if ! getfacl -cp "$folder" 2>/dev/null | grep -qx "user:$uid:rwx"; then
        # rwX: files readable and writable, folders also searchable; d: the same for what is made there.
        setfacl -R -m "u:$uid:rwX" -m "d:u:$uid:rwX" "$folder" \
            || echo "prepare: cannot give uid $uid write access to $folder (no ACLs there?): it stays read-only" >&2
        changed=1
    fi
done
if [ -n "$changed" ]; then
    echo changed
fi
