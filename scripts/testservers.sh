#!/usr/bin/env bash
# testservers.sh — obtain, build, start, wait for and stop the real database
# servers that auditflow's integration tests run against (see docs/testing.md,
# which lists the prerequisites: Go with access to the module
# proxy, node and npm for dynalite, PostgreSQL 15 at /usr/lib/postgresql/15
# for FerretDB):
#
#   mongo     FerretDB (MongoDB wire protocol) on a private PostgreSQL 15
#   dynamo    dynalite (DynamoDB API, in memory), pinned in tools/dynalite
#   couchbase gocaves (Couchbase's mock cluster), patched to bind loopback
#
# Usage:
#   scripts/testservers.sh start [mongo] [dynamo] [couchbase]   (default: all)
#   scripts/testservers.sh stop
#   scripts/testservers.sh build [mongo] [dynamo] [couchbase]   (warm the cache)
#   scripts/testservers.sh env       (prints the path of the env file)
#
# After `start`:  . "$(scripts/testservers.sh env)" && go test ./...
#
# Everything listens on 127.0.0.1 only, on ports the kernel picked as free.
# `start` always begins with `stop`, so a second start, or a start after a
# crash, replaces whatever was left behind; every start gets empty servers.
#
# Environment knobs:
#   AUDITFLOW_CACHE          build cache        (default $ROOT/.cache)
#   AUDITFLOW_STATE          pids, logs, env    (default $ROOT/.cache/testservers)
#   AUDITFLOW_START_TIMEOUT  seconds per server to become ready (default 60)
set -euo pipefail

# ---- pinned versions ---------------------------------------------------------
# A bump here changes the cache key, so the next build starts from scratch.
FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2
GOCAVES_MODULE=github.com/couchbaselabs/gocaves
GOCAVES_VERSION=v0.0.1-75
# Bump when the patches applied to gocaves below change, to force a rebuild.
GOCAVES_PATCHLEVEL=1
# Must match tools/dynalite/package.json (and its lock file); checked below.
DYNALITE_VERSION=4.0.0
# Bump when the patch applied to dynalite below changes, to force a reinstall.
DYNALITE_PATCHLEVEL=1
PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/${PG_MAJOR}/bin

# Fixed by gocaves' default mock cluster; written to the env file for tests.
COUCHBASE_USER=Administrator
COUCHBASE_PASSWORD=password
COUCHBASE_BUCKET=default

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE=${AUDITFLOW_CACHE:-$ROOT/.cache}
STATE=${AUDITFLOW_STATE:-$ROOT/.cache/testservers}
START_TIMEOUT=${AUDITFLOW_START_TIMEOUT:-60}
DYNALITE_DIR=$ROOT/tools/dynalite

FERRETDB_BIN=$CACHE/ferretdb/$FERRETDB_VERSION/ferretdb
GOCAVES_BIN=$CACHE/gocaves/$GOCAVES_VERSION-p$GOCAVES_PATCHLEVEL/gocaves
DYNALITE_CLI=$DYNALITE_DIR/node_modules/dynalite/cli.js

LOGS=$STATE/logs
PIDS=$STATE/pids
ENV_FILE=$STATE/env

ALL_SERVICES=(mongo dynamo couchbase)

say() { printf '[testservers %3ss] %s\n' "$SECONDS" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---- small helpers -----------------------------------------------------------

# free_ports N prints N distinct loopback ports that are free right now. The
# sockets are held open together so the kernel can't hand out one port twice.
# A server may still lose its port to someone else before it binds; the
# start functions retry on "address in use" for that case.
free_ports() {
	if command -v python3 >/dev/null 2>&1; then
		python3 - "$1" <<-'PY'
			import socket, sys
			socks = []
			for _ in range(int(sys.argv[1])):
			    s = socket.socket()
			    s.bind(("127.0.0.1", 0))
			    socks.append(s)
			print(" ".join(str(s.getsockname()[1]) for s in socks))
		PY
		return
	fi
	# Fallback: random ports below the usual ephemeral range that nothing answers on.
	local out=() p
	while ((${#out[@]} < $1)); do
		p=$((20000 + RANDOM % 12000))
		[[ " ${out[*]} " == *" $p "* ]] && continue
		tcp_open "$p" || out+=("$p")
	done
	echo "${out[*]}"
}

# ports N: free_ports, checked, for `read -r a b < <(ports 2)`. A failure here
# would otherwise vanish inside the process substitution.
ports() {
	local p
	p=$(free_ports "$1") || die "could not pick free ports"
	[[ $p =~ ^[0-9]+( [0-9]+)*$ ]] || die "could not pick free ports (got '$p')"
	echo "$p"
}

# tcp_open PORT: does something accept connections on 127.0.0.1:PORT?
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_ok PORT: does GET / on 127.0.0.1:PORT answer 200? (No curl needed.)
http_ok() {
	(
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
		IFS= read -r -t 5 status <&3 || exit 1
		[[ $status == HTTP/1.?\ 200* ]]
	) 2>/dev/null
}

# is_ours PID MARKER: is PID alive and still the process we started? pids
# files outlive crashes and reboots, so a recorded pid may belong to someone
# else by now; MARKER is a path that appears in our process's command line.
# Zombies have an empty cmdline and so count as gone.
is_ours() {
	[[ $1 =~ ^[0-9]+$ && -n $2 && -r /proc/$1/cmdline ]] || return 1
	tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# spawn NAME MARKER CMD...: start CMD in its own session (so it survives this
# script and a Ctrl-C in the caller's terminal, and stop can kill its whole
# group), with all output in $LOGS/NAME.log and no inherited stdio: a caller
# capturing our output, e.g. through a pipe, must not wait on the servers.
spawn() {
	local name=$1 marker=$2
	shift 2
	setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
	echo "$!" >"$PIDS/$name.pid"
	printf '%s\n' "$marker" >"$PIDS/$name.marker"
}

# stop_recorded NAME: TERM the recorded process group, KILL it after 10 s.
stop_recorded() {
	local name=$1 pid marker i
	[[ -f $PIDS/$name.pid ]] || return 0
	pid=$(cat "$PIDS/$name.pid" 2>/dev/null) || true
	marker=$(cat "$PIDS/$name.marker" 2>/dev/null) || true
	if is_ours "$pid" "$marker"; then
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			is_ours "$pid" "$marker" || break
			sleep 0.1
		done
		if is_ours "$pid" "$marker"; then
			say "$name (pid $pid) ignored SIGTERM; killing it"
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$PIDS/$name.pid" "$PIDS/$name.marker"
}

# wait_ready NAME TIMEOUT CHECK...: poll CHECK until it succeeds; fail early
# if the process died, and late if TIMEOUT passes. Returns 0 ready, 1 died,
# 2 timed out, so callers can retry a lost port race.
wait_ready() {
	local name=$1 timeout=$2 pid deadline
	shift 2
	pid=$(<"$PIDS/$name.pid")
	deadline=$((SECONDS + timeout))
	while ((SECONDS < deadline)); do
		if "$@"; then return 0; fi
		# Not is_ours: right after spawn the child may not have exec'd the
		# server yet, and its command line is still this script's.
		running "$pid" || return 1
		sleep 0.2
	done
	return 2
}

# running PID: is PID alive (not gone, not a zombie)?
running() {
	local state
	[[ $1 =~ ^[0-9]+$ && -r /proc/$1/stat ]] || return 1
	state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ $state != Z && $state != X ]]
}

port_in_use_failure() { grep -qiE 'address already in use|EADDRINUSE|could not bind' "$LOGS/$1.log" 2>/dev/null; }

fail_server() { # NAME RC
	local why="did not become ready within ${START_TIMEOUT}s"
	[[ $2 == 1 ]] && why="exited during startup"
	die "$1 $why; see $LOGS/$1.log:
$(tail -n 20 "$LOGS/$1.log" 2>/dev/null | sed 's/^/    /')"
}

# ---- build: FerretDB, gocaves, dynalite --------------------------------------

# The Go builds below happen in copies of the modules outside this project's
# module, each with its own go.mod, so the project's go.mod/go.sum are never
# touched. GOWORK=off keeps a go.work here from pulling them in; -mod=mod
# lets go fill in go.sum entries those old modules lack; the project's
# .cache/ directory is invisible to ./... because it starts with a dot.
go_in() { # DIR ARGS...: run go in DIR as described above
	local dir=$1
	shift
	(cd "$dir" && GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 go "$@")
}

# module_dir MODULE VERSION: download a module into the module cache and print
# its (read-only) directory. Runs from / so no go.mod is in scope.
module_dir() {
	local json dir
	json=$(cd / && GOWORK=off GOFLAGS='' go mod download -json "$1@$2") ||
		die "go mod download $1@$2 failed: $json"
	dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
	[[ -n $dir && -d $dir ]] || die "go mod download $1@$2 gave no directory: $json"
	printf '%s\n' "$dir"
}

# with_lock NAME CMD...: serialise builds of NAME across concurrent runs of
# this script (e.g. `build` in one shell and `start` in another).
with_lock() {
	local name=$1 fd
	shift
	mkdir -p "$CACHE"
	exec {fd}>"$CACHE/.$name.lock"
	flock "$fd"
	"$@"
	exec {fd}>&-
}

# The build_* functions run in a subshell of their own (see build), so they
# may exit on error and use an EXIT trap to remove their scratch directory.
ferretdb_current() { [[ -x $FERRETDB_BIN ]]; }

build_ferretdb() {
	ferretdb_current && return 0 # built by a concurrent run while we waited for the lock
	local src work
	src=$(module_dir "$FERRETDB_MODULE" "$FERRETDB_VERSION")
	mkdir -p "$(dirname "$FERRETDB_BIN")"
	work=$(mktemp -d "$(dirname "$FERRETDB_BIN")/build.XXXXXX")
	BUILD_WORK=$work
	trap 'rm -rf "$BUILD_WORK"' EXIT
	cp -R "$src/." "$work/src"
	chmod -R u+w "$work/src"
	# The module zip lacks this generated file, and FerretDB panics at start
	# ("Invalid build/version/version.txt file content") without it.
	printf '%s\n' "$FERRETDB_VERSION" >"$work/src/build/version/version.txt"
	go_in "$work/src" build -trimpath -o "$work/ferretdb" ./cmd/ferretdb
	mv -f "$work/ferretdb" "$FERRETDB_BIN" # atomic: a half-built binary is never cached
}

gocaves_current() { [[ -x $GOCAVES_BIN ]]; }

build_gocaves() {
	gocaves_current && return 0
	local src work s
	src=$(module_dir "$GOCAVES_MODULE" "$GOCAVES_VERSION")
	mkdir -p "$(dirname "$GOCAVES_BIN")"
	work=$(mktemp -d "$(dirname "$GOCAVES_BIN")/build.XXXXXX")
	BUILD_WORK=$work
	trap 'rm -rf "$BUILD_WORK"' EXIT
	cp -R "$src/." "$work/src"
	chmod -R u+w "$work/src"
	s=$work/src
	# The zip's go.mod replaces the nested `client` module with ./client, which
	# the zip does not contain; only example/ uses it.
	rm -rf "$s/example"
	go_in "$s" mod edit \
		-droprequire="$GOCAVES_MODULE/client" -dropreplace="$GOCAVES_MODULE/client"
	# Generates checksuite/checksuite.go and mock/data/gobindata.go, which the
	# zip also lacks.
	go_in "$s" run ./tools/prebuildstep.go
	# Upstream listens on every interface (":%d"); tests must stay on loopback.
	sed -i 's/fmt\.Sprintf(":%d", s\.listenPort)/fmt.Sprintf("127.0.0.1:%d", s.listenPort)/' \
		"$s/mock/mockimpl/servers/memdserver.go" "$s/mock/mockimpl/servers/httpserver.go" \
		"$s/cmd/api/apiserver.go"
	# It logs two lines per KV packet, which halves throughput and fills the log.
	sed -i -e '/log\.Printf("received kv packet /d' -e '/log\.Printf("sending kv packet /d' \
		"$s/mock/mockimpl/cluster.go"
	# Fail loudly if a patch no longer applies rather than ship an open listener.
	if grep -rn --include='*.go' 'Sprintf(":%d"' "$s/mock" "$s/cmd" ||
		grep -n 'ing kv packet %p' "$s/mock/mockimpl/cluster.go"; then
		die "gocaves $GOCAVES_VERSION: a source patch did not apply (lines above)"
	fi
	go_in "$s" build -trimpath -o "$work/gocaves" .
	mv -f "$work/gocaves" "$GOCAVES_BIN"
}

# node_modules is current if it was installed from this very lock file by
# this node; npm ci deletes node_modules first, so the stamp is written last.
DYNALITE_STAMP=$DYNALITE_DIR/node_modules/.auditflow-stamp
dynalite_want() { echo "$(sha256sum <"$DYNALITE_DIR/package-lock.json" | cut -d' ' -f1) node-$(node --version) p$DYNALITE_PATCHLEVEL"; }
dynalite_current() {
	[[ -f $DYNALITE_STAMP && -f $DYNALITE_CLI && $(cat "$DYNALITE_STAMP") == "$(dynalite_want 2>/dev/null)" ]]
}

install_dynalite() {
	grep -q "\"dynalite\": \"$DYNALITE_VERSION\"" "$DYNALITE_DIR/package.json" ||
		die "tools/dynalite/package.json does not pin dynalite $DYNALITE_VERSION; bump both together"
	dynalite_current && return 0
	local want
	want=$(dynalite_want)
	# --ignore-scripts: nothing needs compiling (the LevelDB binding ships
	# prebuilt) and no install script may try to download anything.
	(cd "$DYNALITE_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
	local got
	got=$(node -p 'require(process.argv[1]).version' "$DYNALITE_DIR/node_modules/dynalite/package.json")
	[[ $got == "$DYNALITE_VERSION" ]] || die "npm ci installed dynalite $got, want $DYNALITE_VERSION"
	# dynalite throws from a request's 'error' handler, so a client that
	# hangs up mid-request (a cancelled context: the suite does that on
	# purpose) kills the whole server. A hung-up request is not a server
	# fault: ignore it.
	local index=$DYNALITE_DIR/node_modules/dynalite/index.js
	sed -i "s/req.on('error', function (err) { throw err })/req.on('error', function () {})/" "$index"
	grep -q "req.on('error', function () {})" "$index" || die "could not patch $index (dynalite changed?)"
	printf '%s\n' "$want" >"$DYNALITE_STAMP"
}

ensure_postgres() {
	[[ -x $PG_BIN/postgres ]] && return 0
	# Present in the machine image; install it where it is not.
	if ! command -v apt-get >/dev/null || ((EUID != 0)); then
		die "PostgreSQL $PG_MAJOR not found in $PG_BIN; install postgresql-$PG_MAJOR"
	fi
	say "installing postgresql-$PG_MAJOR from Debian"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$PG_MAJOR" >/dev/null
}

# build SERVICE...: obtain/build what the services need. The two Go builds run
# side by side: on 2 cores that cannot shorten compiling, but it overlaps one
# build's downloads with the other's compiling, and npm ci (mostly network)
# with both. Measured cold on 2 cores: 83 s side by side, 97 s one by one.
build() {
	local svc jobs=() names=() i rc failed=0
	for svc in "$@"; do
		case $svc in
		mongo) names+=(ferretdb) ;;
		dynamo) names+=(dynalite) ;;
		couchbase) names+=(gocaves) ;;
		esac
	done
	mkdir -p "$LOGS"
	if [[ " $* " == *" mongo "* ]]; then ensure_postgres; fi
	for i in "${names[@]}"; do
		(
			t0=$SECONDS
			"${i}_current" && exit 0
			say "building $i (log: $LOGS/build-$i.log)"
			case $i in
			ferretdb) with_lock ferretdb build_ferretdb ;;
			gocaves) with_lock gocaves build_gocaves ;;
			dynalite) with_lock dynalite install_dynalite ;;
			esac >"$LOGS/build-$i.log" 2>&1
			say "built $i in $((SECONDS - t0))s"
		) &
		jobs+=($!)
	done
	for i in "${!jobs[@]}"; do
		rc=0
		wait "${jobs[$i]}" || rc=$?
		if ((rc != 0)); then
			failed=1
			say "building ${names[$i]} failed; see $LOGS/build-${names[$i]}.log:"
			tail -n 20 "$LOGS/build-${names[$i]}.log" | sed 's/^/    /' >&2
		fi
	done
	((failed == 0)) || die "build failed"
}

# ---- start -------------------------------------------------------------------

# PostgreSQL refuses to run as root, so it runs as user postgres, which cannot
# necessarily reach $STATE (a checkout under /root, say). Its data and socket
# live in a private directory under /tmp instead; the path is recorded so
# stop can find and remove it. Its log is still $LOGS/postgres.log: the file
# is opened by this (root) shell, not by postgres.
start_postgres() { # PORT
	local port=$1 dir
	dir=$(mktemp -d /tmp/auditflow-pg.XXXXXX)
	printf '%s\n' "$dir" >"$STATE/postgres.dir"
	mkdir -p "$dir/sock"
	chown -R postgres: "$dir"
	chmod 700 "$dir" "$dir/sock"
	runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
		--locale=C --no-sync --no-instructions >"$LOGS/postgres-initdb.log" 2>&1 ||
		die "initdb failed; see $LOGS/postgres-initdb.log"
	# Durability is irrelevant for throwaway test data: skip every fsync.
	spawn postgres "$dir/data" runuser -u postgres -- "$PG_BIN/postgres" -D "$dir/data" \
		-c listen_addresses=127.0.0.1 -c port="$port" -c unix_socket_directories="$dir/sock" \
		-c fsync=off -c synchronous_commit=off -c full_page_writes=off
}

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -t 1; }

stop_postgres() {
	local dir
	[[ -f $STATE/postgres.dir ]] || { stop_recorded postgres; return 0; }
	dir=$(<"$STATE/postgres.dir")
	if [[ -f $dir/data/postmaster.pid ]]; then
		runuser -u postgres -- "$PG_BIN/pg_ctl" stop -D "$dir/data" -m fast -w -t 30 \
			>/dev/null 2>&1 || true
	fi
	stop_recorded postgres # only does something if pg_ctl could not
	# Only ever remove what mktemp made for us.
	if [[ $dir == /tmp/auditflow-pg.* ]]; then rm -rf "$dir"; fi
	rm -f "$STATE/postgres.dir"
}

# Each start_* picks its port(s), launches, waits, and retries with fresh
# ports if another process took a port between free_ports and bind.
# Results go into the globals below.
MONGO_URI='' DYNAMO_ENDPOINT='' COUCHBASE_CONNSTR=''

start_mongo() {
	local rc pgport mport
	for _ in 1 2 3; do
		read -r pgport mport < <(ports 2)
		start_postgres "$pgport"
		rc=0
		wait_ready postgres "$START_TIMEOUT" pg_ready "$pgport" || rc=$?
		if ((rc == 0)); then break; fi
		stop_postgres
		((rc == 1)) && port_in_use_failure postgres && continue
		fail_server postgres "$rc"
	done
	((rc == 0)) || fail_server postgres "$rc"
	"$PG_BIN/createdb" -h 127.0.0.1 -p "$pgport" -U postgres ferretdb ||
		die "createdb ferretdb failed on postgres :$pgport"
	for _ in 1 2 3; do
		rm -rf "$STATE/ferretdb" && mkdir -p "$STATE/ferretdb"
		# --debug-addr=- : its default fixed HTTP port would clash between runs.
		# Marker: the state dir, not the binary, which other STATEs share.
		spawn ferretdb "--state-dir=$STATE/ferretdb" "$FERRETDB_BIN" --handler=postgresql \
			--postgresql-url="postgres://postgres@127.0.0.1:$pgport/ferretdb" \
			--listen-addr="127.0.0.1:$mport" --state-dir="$STATE/ferretdb" \
			--debug-addr=- --telemetry=disable --log-level=error
		rc=0
		wait_ready ferretdb "$START_TIMEOUT" tcp_open "$mport" || rc=$?
		if ((rc == 0)); then break; fi
		stop_recorded ferretdb
		((rc == 1)) && port_in_use_failure ferretdb && { read -r mport < <(ports 1); continue; }
		fail_server ferretdb "$rc"
	done
	((rc == 0)) || fail_server ferretdb "$rc"
	MONGO_URI="mongodb://127.0.0.1:$mport/"
	say "mongo ready: $MONGO_URI (FerretDB $FERRETDB_VERSION on PostgreSQL :$pgport)"
}

launch_dynamo() { # PORT
	# Without --host it listens on every interface. Without the *Ms 0 flags
	# every table create/delete/update stays in a transitional state for
	# seconds, and SDK waiters take ~20 s.
	spawn dynalite "$DYNALITE_CLI" node "$DYNALITE_CLI" --host 127.0.0.1 --port "$1" \
		--createTableMs 0 --deleteTableMs 0 --updateTableMs 0
}

wait_dynamo() { # PORT
	local port=$1 rc
	for _ in 1 2 3; do
		rc=0
		wait_ready dynalite "$START_TIMEOUT" http_ok "$port" || rc=$?
		if ((rc == 0)); then break; fi
		stop_recorded dynalite
		((rc == 1)) && port_in_use_failure dynalite && {
			read -r port < <(ports 1)
			launch_dynamo "$port"
			continue
		}
		fail_server dynalite "$rc"
	done
	((rc == 0)) || fail_server dynalite "$rc"
	DYNAMO_ENDPOINT="http://127.0.0.1:$port"
	say "dynamo ready: $DYNAMO_ENDPOINT (dynalite $DYNALITE_VERSION)"
}

launch_couchbase() {
	# gocaves picks its own free ports and prints them as JSON on stderr.
	spawn gocaves "$GOCAVES_BIN" "$GOCAVES_BIN" --mock-only
}

# Ready once the connection string is printed and its first KV port answers.
gocaves_ready() {
	local connstr first
	connstr=$(grep -o '"connstr":"[^"]*"' "$LOGS/gocaves.log" 2>/dev/null | head -n 1 | cut -d'"' -f4)
	[[ -n $connstr ]] || return 1
	first=${connstr#couchbase://}
	first=${first%%,*}
	tcp_open "${first##*:}" || return 1
	COUCHBASE_CONNSTR=$connstr
}

wait_couchbase() {
	local rc=0
	wait_ready gocaves "$START_TIMEOUT" gocaves_ready || rc=$?
	((rc == 0)) || fail_server gocaves "$rc"
	say "couchbase ready: $COUCHBASE_CONNSTR (gocaves $GOCAVES_VERSION)"
}

write_env() {
	local tmp line
	tmp=$(mktemp "$STATE/env.XXXXXX")
	{
		echo "# Written by scripts/testservers.sh start; load with: . \"$ENV_FILE\""
		[[ -n $MONGO_URI ]] && echo "export AUDITFLOW_TEST_MONGO_URI=$MONGO_URI"
		[[ -n $DYNAMO_ENDPOINT ]] && echo "export AUDITFLOW_TEST_DYNAMO_ENDPOINT=$DYNAMO_ENDPOINT"
		if [[ -n $COUCHBASE_CONNSTR ]]; then
			echo "export AUDITFLOW_TEST_COUCHBASE_CONNSTR=$COUCHBASE_CONNSTR"
			echo "export AUDITFLOW_TEST_COUCHBASE_USER=$COUCHBASE_USER"
			echo "export AUDITFLOW_TEST_COUCHBASE_PASSWORD=$COUCHBASE_PASSWORD"
			echo "export AUDITFLOW_TEST_COUCHBASE_BUCKET=$COUCHBASE_BUCKET"
		fi
	} >"$tmp"
	# Values are written unquoted so any env-file reader can take them; make
	# sure nothing in them could mean something to a shell.
	while IFS= read -r line; do
		[[ $line == \#* || $line =~ ^export\ [A-Z_]+=[A-Za-z0-9:/.,_@-]+$ ]] ||
			die "refusing to write unsafe env line: $line"
	done <"$tmp"
	mv -f "$tmp" "$ENV_FILE"
}

stop_all() {
	rm -f "$ENV_FILE" # first: never leave an env file pointing at dead servers
	stop_recorded gocaves
	stop_recorded dynalite
	stop_recorded ferretdb # before PostgreSQL, so its connections go first
	stop_postgres
	rm -rf "$STATE/ferretdb"
}

# ---- commands ----------------------------------------------------------------

# select_services ARGS...: set SERVICES to the named servers (default all),
# in a fixed order, rejecting unknown names.
SERVICES=()
select_services() {
	local want=("$@") s
	((${#want[@]})) || want=("${ALL_SERVICES[@]}")
	for s in "${want[@]}"; do
		[[ " ${ALL_SERVICES[*]} " == *" $s "* ]] || die "unknown server '$s' (want: ${ALL_SERVICES[*]})"
	done
	SERVICES=()
	for s in "${ALL_SERVICES[@]}"; do
		if [[ " ${want[*]} " == *" $s "* ]]; then SERVICES+=("$s"); fi
	done
}
wants() { [[ " ${SERVICES[*]} " == *" $1 "* ]]; }

STARTED=0 # read by the EXIT trap set in cmd_start
cmd_start() {
	local dport=
	select_services "$@"
	((EUID == 0)) || ! wants mongo ||
		die "starting mongo needs root (PostgreSQL runs as user postgres via runuser)"
	mkdir -p "$STATE" "$PIDS"
	stop_all # clean up after an earlier start or crash
	rm -rf "$LOGS" && mkdir -p "$LOGS"
	build "${SERVICES[@]}"

	# A failed or interrupted start stops whatever it had started; logs stay.
	trap '((STARTED)) || { say "start failed; stopping what was started"; stop_all; }' EXIT
	trap 'exit 130' INT TERM

	# dynalite and gocaves come up on their own while PostgreSQL and FerretDB,
	# which depend on each other, start one after the other.
	if wants dynamo; then
		read -r dport < <(ports 1)
		launch_dynamo "$dport"
	fi
	if wants couchbase; then launch_couchbase; fi
	if wants mongo; then start_mongo; fi
	if wants dynamo; then wait_dynamo "$dport"; fi
	if wants couchbase; then wait_couchbase; fi

	write_env
	# shellcheck disable=SC2034 # read by the EXIT trap
	STARTED=1
	say "${SERVICES[*]} ready after ${SECONDS}s; env file: $ENV_FILE"
}

cmd_stop() {
	[[ -d $STATE ]] || return 0
	mkdir -p "$PIDS"
	stop_all
	say "stopped"
}

cmd_build() {
	select_services "$@"
	build "${SERVICES[@]}"
	say "build done in ${SECONDS}s"
}

cmd_env() {
	[[ -f $ENV_FILE ]] || say "warning: $ENV_FILE does not exist yet; run: $0 start"
	printf '%s\n' "$ENV_FILE"
}

main() {
	local cmd=${1:-}
	(($#)) && shift
	case $cmd in
	start) cmd_start "$@" ;;
	stop) cmd_stop ;;
	build) cmd_build "$@" ;;
	env) cmd_env ;;
	*)
		sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
		[[ $cmd == -h || $cmd == --help || $cmd == help ]] || exit 2
		;;
	esac
}

main "$@"
