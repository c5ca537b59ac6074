#!/bin/sh
# Makes a private CA, a server certificate for the NATS nodes and one client
# certificate per auditflow role, with openssl:
#
#   deploy/tls/make-certs.sh [DIR] [EXTRA_SERVER_NAME...]
#
# DIR defaults to deploy/tls/certs (git-ignored). The server certificate
# names nats1, nats2, nats3, localhost and 127.0.0.1, plus any extra names
# given (the host name clients outside compose use). Existing files are
# kept: delete DIR to start over, or a single file to remake it.
#
#   ca.pem, ca-key.pem             the CA (keep ca-key.pem offline)
#   server.pem, server-key.pem     every NATS node (routes too)
#   <role>.pem, <role>-key.pem     admin, operator, projector, console,
#                                  siem, runner-example-service
#
# A role's certificate names the role as its DNS name (subjectAltName
# DNS:<role>): with verify_and_map (deploy/nats/tls.conf) the server takes
# the NATS user from it, so the certificate is the role. Certificates made
# by an older make-certs.sh name no role: delete them and run it again.
#
# Keys are EC P-256, readable by their owner only; certificates last 825
# days (the CA ten years). Add a role: ROLES="runner-billing" make-certs.sh
# (the role is the NATS user's name; "sys" for the system account's user).
set -eu

dir=${1:-$(dirname "$0")/certs}
[ $# -gt 0 ] && shift
roles=${ROLES:-"admin operator projector console siem runner-example-service"}
mkdir -p "$dir"
umask 077
cd "$dir"

key() { [ -f "$1" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

if [ ! -f ca.pem ]; then
  key ca-key.pem
  openssl req -x509 -new -key ca-key.pem -sha256 -days 3650 -subj "/O=auditflow/CN=auditflow NATS CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
fi

# sign NAME SUBJECT EXTENSIONS: a certificate for NAME-key.pem, signed by the CA.
sign() {
  [ -f "$1.pem" ] && return 0
  key "$1-key.pem"
  ext=$(mktemp)
  printf '%s\n' "$3" >"$ext"
  openssl req -new -key "$1-key.pem" -subj "$2" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -sha256 -days 825 \
    -extfile "$ext" -out "$1.pem"
  rm -f "$1.csr" "$ext"
}

san="DNS:nats1,DNS:nats2,DNS:nats3,DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
  case $name in
    *[!0-9.]*) san="$san,DNS:$name" ;;
    *) san="$san,IP:$name" ;;
  esac
done
# Servers present it to clients and, on routes, to each other: both uses.
sign server "/O=auditflow/CN=nats" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san"

for role in $roles; do
  sign "$role" "/O=auditflow/OU=$role/CN=$role" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=DNS:$role"
done

# Certificates are public; the container users must read them.
chmod 644 ./*.pem
chmod 600 ./*-key.pem
rm -f ca.srl
echo "certificates in $dir:"
ls -l
