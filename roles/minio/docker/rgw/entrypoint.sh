#!/bin/sh
# Creates (once) the S3 user with the credentials from the environment, then runs radosgw.
set -eu
: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is not set}"
set -- --no-mon-config --rgw-backend-store dbstore --rgw-config-store dbstore \
       --dbstore-db-dir /var/lib/aie-s3

# radosgw-admin (Ceph 18) now and then hangs while it first sets up its SQLite config
# store; a bounded wait and another try get past it.
admin() {
    for attempt in 1 2 3 4 5; do
        rc=0
        timeout 30 radosgw-admin "$@" >/dev/null 2>&1 || rc=$?
        [ "$rc" = 124 ] || return "$rc"
        echo "aie: radosgw-admin timed out (try $attempt), trying again" >&2
    done
    return 124
}

if admin "$@" user info --uid=aie; then
    # Credentials given anew (from Ansible Vault, say) replace the user's key.
    admin "$@" key create --uid=aie --key-type=s3 \
        --access-key="$S3_ACCESS_KEY" --secret="$S3_SECRET_KEY"
else
    admin "$@" user create --uid=aie --display-name=aie \
        --access-key="$S3_ACCESS_KEY" --secret="$S3_SECRET_KEY"
fi
exec radosgw -f "$@" --rgw-frontends "beast port=9000" --log-to-stderr=true --err-to-stderr=true --log-file=
