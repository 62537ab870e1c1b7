#!/bin/sh
# Installs the host key and authorized key mounted from the controller at /etc/aie, so the
# host key survives container re-creation, then checks the configuration and runs sshd.
set -eu
install -m 0600 /etc/aie/ssh_host_ed25519_key /etc/ssh/host_keys/ssh_host_ed25519_key
install -m 0644 /etc/aie/ssh_host_ed25519_key.pub /etc/ssh/host_keys/ssh_host_ed25519_key.pub
install -m 0644 /etc/aie/authorized_keys "/etc/ssh/authorized_keys/$SFTP_USER"
install -m 0644 /etc/aie/authorized_keys_reader "/etc/ssh/authorized_keys/$SFTP_READER"
# The artifact folder is the data volume: it belongs to the SFTP user.
chown "$SFTP_USER:sftp" "/srv/sftp$SFTP_DIR"
chmod 0750 "/srv/sftp$SFTP_DIR"
/usr/sbin/sshd -t
exec "$@"
