#!/bin/sh
# Creates (once) the S3 user with the credentials from the environment, then runs radosgw.
set -eu
: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is not set}"
set -- --no-mon-config --rgw-backend-store dbstore --rgw-config-store dbstore \
       --dbstore-db-dir /var/lib/aie-s3
if ! radosgw-admin "$@" user info --uid=aie >/dev/null 2>&1; then
    radosgw-admin "$@" user create --uid=aie --display-name=aie \
        --access-key="$S3_ACCESS_KEY" --secret="$S3_SECRET_KEY" >/dev/null
else
    # Credentials given anew (from Ansible Vault, say) replace the user's key.
    radosgw-admin "$@" key create --uid=aie --key-type=s3 \
        --access-key="$S3_ACCESS_KEY" --secret="$S3_SECRET_KEY" >/dev/null
fi
exec radosgw -f "$@" --rgw-frontends "beast port=9000" --log-to-stderr=true --err-to-stderr=true --log-file=
