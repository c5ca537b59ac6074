#!/bin/sh
# Makes the NATS passwords of docker-compose.yml, random, with openssl:
#
#   deploy/make-secrets.sh [DIR]
#
# DIR defaults to deploy/secrets (git-ignored). Existing files are kept:
# delete one to make it again (then restart what uses it).
#
#   nats.env                  the NATS servers: every user's password and
#                             the route password (deploy/nats/*.conf read
#                             them from the environment)
#   <role>.env                one role's client: AUDITFLOW_NATS_URL with its
#                             user and password — admin, operator,
#                             projector, console, siem (the SIEM feed),
#                             runner-example-service
#   operator.nk,              signing keys (auditflow keys new): the
#   runner-<pipeline>.nk      operators' (issue fix) and each pipeline's
#                             runners'
#   trust.yaml                the trust list naming them: projectors,
#                             runners and verify refuse to run without one
#                             (docs/security.md, Signed events). Public: mode 644.
#
# Keys are made with the auditflow binary on PATH, or go run from this
# checkout. They are mode 600: give them to uid 10001 (the image's user)
# before the demo runner mounts its own (chown 10001 runner-*.nk).
#
# Files are readable by their owner only. A client gets only its own
# role's file (env_file in docker-compose.yml), never nats.env.
# Add a pipeline's runner: RUNNERS="example-service billing" make-secrets.sh,
# and its user and permissions in deploy/nats/accounts.conf.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd -P)
dir=${1:-$(dirname "$0")/secrets}
runners=${RUNNERS:-example-service}
servers=${NATS_SERVERS:-"nats1:4222 nats2:4222 nats3:4222"}
mkdir -p "$dir"
umask 077
cd "$dir"

pw() { openssl rand -hex 24; }
# var NAME: NAME's value in nats.env, made once.
var() {
  v=$(sed -n "s/^$1=//p" nats.env 2>/dev/null || true)
  if [ -z "$v" ]; then
    v=$(pw)
    echo "$1=$v" >>nats.env
  fi
  printf '%s' "$v"
}
upper() { printf '%s' "$1" | tr 'a-z-' 'A-Z_'; }

route=$(var AUDITFLOW_ROUTE_PASSWORD)
i=1
for n in nats1 nats2 nats3; do
  grep -q "^AUDITFLOW_ROUTE_$i=" nats.env 2>/dev/null || echo "AUDITFLOW_ROUTE_$i=nats-route://route:$route@$n:6222" >>nats.env
  i=$((i + 1))
done
var AUDITFLOW_SYS_PASSWORD >/dev/null

# client ROLE USER: ROLE.env with USER's URLs.
client() {
  p=$(var "AUDITFLOW_$(upper "$1")_PASSWORD")
  [ -f "$1.env" ] && return 0
  urls=""
  for s in $servers; do urls="${urls:+$urls,}nats://$2:$p@$s"; done
  echo "AUDITFLOW_NATS_URL=$urls" >"$1.env"
}
client admin admin
client operator operator
client projector projector
client console console
client siem siem
for r in $runners; do
  client "runner-$r" "runner-$r"
done
# Signed events: a key per signer, and the list that trusts them.
af() {
  if [ -z "${AF:-}" ]; then
    if command -v auditflow >/dev/null 2>&1; then
      AF=auditflow
    else # built once from this checkout
      afdir=$(mktemp -d)
      trap 'rm -rf "$afdir"' EXIT
      AF=$afdir/auditflow
      (cd "$root" && go build -o "$AF" ./cmd/auditflow)
    fi
  fi
  "$AF" "$@"
}
# key FILE NAME ROLE PIPELINE: a signing key, made once.
key() {
  [ -f "$1" ] || af keys new --out "$PWD/$1" --name "$2" --role "$3" --pipeline "$4" >/dev/null
}
# entry FILE NAME ROLE PIPELINE: its trust-list entry.
entry() {
  pk=$(af keys public --key "$PWD/$1")
  printf '  - key: %s\n    name: %s\n    roles: [%s]\n    pipelines: ["%s"]\n' "$pk" "$2" "$3" "$4"
}
key operator.nk operator operator '*'
for r in $runners; do
  key "runner-$r.nk" "runner-$r" runner "$r"
done
if [ ! -f trust.yaml ]; then
  {
    echo "# Who may sign what (auditflow keys new prints an entry to add)."
    echo "keys:"
    entry operator.nk operator operator '*'
    for r in $runners; do
      entry "runner-$r.nk" "runner-$r" runner "$r"
    done
  } >trust.yaml.tmp
  mv trust.yaml.tmp trust.yaml
  chmod 644 trust.yaml
fi
if [ "$(id -u)" = 0 ]; then
  chown 10001 ./*.nk
fi

echo "secrets in $dir:"
ls -l
