#!/usr/bin/env bash
# A multi-host test cluster on one machine: every "host" is a network
# namespace, joined to the others by a veth pair and a Linux bridge that lives
# in a namespace of its own, so the root namespace's networking is untouched.
# Run `scripts/cluster.sh --help` for the commands. Needs root (ip netns, tc).
set -euo pipefail

PROG=$(basename "$0")
LOCK_FILE=/run/snowflock-cluster.lock
BRIDGE=br0          # inside NAME-net
BRIDGE_HOST=254     # the bridge's own address is 10.213.S.254
MAX_HOSTS=253
DEFAULT_LATENCY=50ms
MIN_BURST=65536     # bytes; must exceed the largest GSO packet (64 KiB)

usage() {
    cat <<EOF
Usage:
  $PROG up K [--name NAME] [--subnet S] [--rate RATE [--burst B] [--latency L]]
  $PROG down [--name NAME]
  $PROG exec [--name NAME] I CMD [ARGS...]
  $PROG status [--name NAME]
  $PROG --help

A cluster of K "hosts" on this machine, for cross-host tests. Each host is a
network namespace NAME-hI (I = 1..K) whose interface eth0 (one end of a veth
pair) has the address 10.213.S.I/24. The other ends of the veth pairs, named
hI, are enslaved to the bridge $BRIDGE, which lives in its own namespace
NAME-net and has the address 10.213.S.$BRIDGE_HOST. Nothing is created in the
root namespace. Loopback is up in every namespace, multicast is enabled on all
interfaces (the bridge floods multicast: no IGMP snooping) and every host has a
route 224.0.0.0/4 via eth0.

Commands:
  up K      create K hosts (1..$MAX_HOSTS) and print them with their addresses.
            Fails with status 3, creating nothing, when a cluster NAME already
            exists or another cluster already uses subnet S.
  down      remove the cluster: processes still running inside its namespaces
            get SIGTERM (SIGKILL after 2 s), then the namespaces are deleted,
            which deletes their interfaces. Idempotent: succeeds when the
            cluster is only partly present or absent.
  exec I    run CMD inside host I (ip netns exec NAME-hI CMD...).
  status    print the cluster's hosts, addresses and shaping; status 1 when
            no part of the cluster exists.

Options:
  --name NAME   cluster name, default "sf"; letters, digits, '_', '.', '-',
                starting with a letter or digit, at most 32 characters.
  --subnet S    third byte of the addresses (0..255). Default: derived from
                NAME as (POSIX cksum of NAME) mod 256, e.g. "sf" -> $(printf sf | cksum | awk '{print $1 % 256}').
  --rate RATE   shape every host's eth0 egress with a token bucket:
                tc qdisc add dev eth0 root tbf rate RATE burst B latency L.
                RATE takes a tc unit: bit, kbit, mbit, gbit, tbit, kibit...,
                or bps, kbps, mbps... (bytes/s), e.g. 1gbit or 10mbit.
  --burst B     token bucket size in bytes; default max(RATE x 10 ms, 64 KiB).
  --latency L   longest a packet may wait in the queue; default $DEFAULT_LATENCY.

Interface names are eth0 (hosts), hI and $BRIDGE (NAME-net): all at most 15
characters whatever NAME is. Creation and removal take a lock
($LOCK_FILE), so concurrent invocations are safe.
Exit status: 0 ok, 1 error, 2 bad usage, 3 name or subnet taken (up).

Examples:
  $PROG up 3 --rate 1gbit
  $PROG exec 1 ip -br addr
  $PROG exec 1 python3 -m http.server --bind 10.213.$(printf sf | cksum | awk '{print $1 % 256}').1 8000
  $PROG down
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $*" >&2; echo "Try '$PROG --help'." >&2; exit 2; }

need_value() { [ $# -ge 2 ] || usage_error "option $1 needs a value"; }

# --- namespaces of a cluster --------------------------------------------------

all_netns() { ip netns list 2>/dev/null | awk '{print $1}'; }

# The host namespaces of cluster $NAME that exist, sorted by host number.
host_netns() {
    local re="^${NAME//./\\.}-h[0-9]+\$"
    all_netns | grep -E "$re" | sort -V || true
}

netns_exists() { all_netns | grep -qxF "$1"; }

# The subnet of the cluster whose bridge namespace is $1, if it has one.
netns_subnet() {
    ip -n "$1" -4 -o addr show dev "$BRIDGE" 2>/dev/null |
        awk -v host="$BRIDGE_HOST" '{ split($4, a, "[./]");
            if (a[1] == 10 && a[2] == 213 && a[4] == host) { print a[3]; exit } }'
}

lock() {
    exec 9>"$LOCK_FILE"
    flock -w 60 9 || die "cannot take the lock $LOCK_FILE"
}

# --- rates --------------------------------------------------------------------

# Bytes per second of a tc rate such as 10mbit, 1gbit, 500kbps; fails if RATE
# has no unit we know.
rate_bytes_per_sec() {
    local r=${1,,} num unit mult
    [[ $r =~ ^([0-9]+(\.[0-9]+)?)([a-z]+)$ ]] || return 1
    num=${BASH_REMATCH[1]}
    unit=${BASH_REMATCH[3]}
    case $unit in
        bit) mult=0.125 ;;
        kbit) mult=125 ;; mbit) mult=125000 ;; gbit) mult=125000000 ;; tbit) mult=125000000000 ;;
        kibit) mult=128 ;; mibit) mult=131072 ;; gibit) mult=134217728 ;; tibit) mult=137438953472 ;;
        bps) mult=1 ;;
        kbps) mult=1000 ;; mbps) mult=1000000 ;; gbps) mult=1000000000 ;; tbps) mult=1000000000000 ;;
        kibps) mult=1024 ;; mibps) mult=1048576 ;; gibps) mult=1073741824 ;; tibps) mult=1099511627776 ;;
        *) return 1 ;;
    esac
    awk -v n="$num" -v m="$mult" 'BEGIN { printf "%.0f\n", n * m }'
}

# --- commands -----------------------------------------------------------------

do_down() {
    local ns all pids tries
    all=$(host_netns)
    if netns_exists "$NAME-net"; then all="$all"$'\n'"$NAME-net"; fi
    # Stop whatever still runs inside, so the namespaces really go away.
    for ns in $all; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    done
    for ns in $all; do
        tries=0
        while pids=$(ip netns pids "$ns" 2>/dev/null) && [ -n "$pids" ]; do
            if [ $tries -ge 40 ]; then
                kill -KILL $pids 2>/dev/null || true
                break
            fi
            sleep 0.05
            tries=$((tries + 1))
        done
    done
    for ns in $all; do
        if ! ip netns delete "$ns" 2>/dev/null && netns_exists "$ns"; then
            echo "$PROG: warning: cannot delete namespace $ns" >&2
        fi
    done
}

print_status() {
    local hosts ns i addr state qdisc subnet
    hosts=$(host_netns)
    if [ -z "$hosts" ] && ! netns_exists "$NAME-net"; then
        echo "cluster $NAME: not up"
        return 1
    fi
    subnet=$(netns_subnet "$NAME-net" || true)
    if [ -n "$subnet" ]; then
        echo "cluster $NAME: $(echo "$hosts" | grep -c .) hosts, subnet 10.213.$subnet.0/24, bridge $BRIDGE in namespace $NAME-net (10.213.$subnet.$BRIDGE_HOST)"
    else
        echo "cluster $NAME: incomplete (no bridge in namespace $NAME-net); '$PROG down --name $NAME' removes it"
    fi
    printf '%-5s %-20s %-16s %-6s %s\n' host namespace address eth0 shaping
    for ns in $hosts; do
        i=${ns##*-h}
        addr=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4; exit}' || true)
        state=$(ip -n "$ns" -o link show dev eth0 2>/dev/null |
            sed -n 's/.* state \([A-Z]*\).*/\1/p' || true)
        qdisc=$(tc -n "$ns" qdisc show dev eth0 root 2>/dev/null |
            awk '$2 == "tbf" { for (k = 1; k <= NF; k++) if ($k == "rate") { print "tbf rate " $(k + 1); exit } }' || true)
        printf '%-5s %-20s %-16s %-6s %s\n' "$i" "$ns" "${addr:--}" "${state:--}" "${qdisc:-none}"
    done
}

CREATING=0
on_exit() {
    local rc=$?
    if [ "$CREATING" = 1 ]; then
        CREATING=0
        echo "$PROG: creating cluster $NAME failed; removing it" >&2
        do_down || true
        [ "$rc" -ne 0 ] || rc=1
    fi
    exit "$rc"
}

do_up() {
    local k=$1 i ns rate_bytes burst other s
    local latency=${LATENCY:-$DEFAULT_LATENCY}
    if [ -n "$RATE" ]; then
        rate_bytes=$(rate_bytes_per_sec "$RATE") ||
            usage_error "--rate $RATE: want a number with a tc unit, e.g. 10mbit or 1gbit"
        burst=${BURST:-$(( rate_bytes / 100 > MIN_BURST ? rate_bytes / 100 : MIN_BURST ))}
    fi

    lock
    if netns_exists "$NAME-net" || [ -n "$(host_netns)" ]; then
        echo "$PROG: cluster $NAME already exists ('$PROG down --name $NAME' removes it)" >&2
        exit 3
    fi
    for other in $(all_netns | grep -E -- '-net$' || true); do
        s=$(netns_subnet "$other" || true)
        if [ "$s" = "$SUBNET" ]; then
            echo "$PROG: subnet 10.213.$SUBNET.0/24 is already used by the cluster in namespace $other (choose another with --subnet)" >&2
            exit 3
        fi
    done

    # From here on, a failure (or Ctrl-C) removes what was created.
    CREATING=1
    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local net="$NAME-net"
    ip netns add "$net"
    ip -n "$net" link set lo up
    ip -n "$net" link add "$BRIDGE" type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    ip -n "$net" addr add "10.213.$SUBNET.$BRIDGE_HOST/24" dev "$BRIDGE"
    ip -n "$net" link set "$BRIDGE" multicast on up
    for ((i = 1; i <= k; i++)); do
        ns="$NAME-h$i"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$net" link add "h$i" type veth peer name eth0 netns "$ns"
        ip -n "$net" link set "h$i" master "$BRIDGE" multicast on up
        ip -n "$ns" addr add "10.213.$SUBNET.$i/24" dev eth0
        ip -n "$ns" link set eth0 multicast on up
        ip -n "$ns" route add 224.0.0.0/4 dev eth0
        if [ -n "$RATE" ]; then
            tc -n "$ns" qdisc add dev eth0 root tbf rate "$RATE" burst "$burst" latency "$latency"
        fi
    done
    # Wait (at most 5 s) until every link has its carrier.
    local tries=0 down_links
    while :; do
        down_links=0
        for ((i = 1; i <= k; i++)); do
            ip -n "$NAME-h$i" -o link show dev eth0 | grep -q 'state UP' || down_links=1
        done
        [ $down_links -eq 0 ] && break
        [ $tries -ge 100 ] && die "links of cluster $NAME did not come up"
        sleep 0.05
        tries=$((tries + 1))
    done
    CREATING=0
    trap - INT TERM
    print_status
}

# --- argument parsing ---------------------------------------------------------

[ $# -ge 1 ] || { usage >&2; exit 2; }
CMD=$1
shift
case $CMD in
    -h|--help|help) usage; exit 0 ;;
    up|down|exec|status) ;;
    *) usage_error "unknown command '$CMD'" ;;
esac

NAME=sf
SUBNET=
RATE=
BURST=
LATENCY=
POS=()
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --name) need_value "$@"; NAME=$2; shift 2 ;;
        --name=*) NAME=${1#*=}; shift ;;
        --subnet) need_value "$@"; SUBNET=$2; shift 2 ;;
        --subnet=*) SUBNET=${1#*=}; shift ;;
        --rate) need_value "$@"; RATE=$2; shift 2 ;;
        --rate=*) RATE=${1#*=}; shift ;;
        --burst) need_value "$@"; BURST=$2; shift 2 ;;
        --burst=*) BURST=${1#*=}; shift ;;
        --latency) need_value "$@"; LATENCY=$2; shift 2 ;;
        --latency=*) LATENCY=${1#*=}; shift ;;
        --) shift; POS+=("$@"); break ;;
        -*) usage_error "unknown option '$1'" ;;
        *)
            POS+=("$1")
            shift
            # exec: everything after the host number is the command.
            if [ "$CMD" = exec ]; then POS+=("$@"); break; fi
            ;;
    esac
done

[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$ ]] ||
    usage_error "bad --name '$NAME' (letters, digits, '_', '.', '-'; at most 32 characters)"
if [ -z "$SUBNET" ]; then
    SUBNET=$(printf '%s' "$NAME" | cksum | awk '{print $1 % 256}')
fi
[[ $SUBNET =~ ^[0-9]{1,3}$ ]] && [ "$SUBNET" -le 255 ] || usage_error "bad --subnet '$SUBNET' (0..255)"
SUBNET=$((10#$SUBNET))
[ "$CMD" = up ] || [ -z "$RATE$BURST$LATENCY" ] || usage_error "--rate, --burst and --latency go with 'up'"
[ "$CMD" = up ] || [ "$CMD" = exec ] || [ ${#POS[@]} -eq 0 ] || usage_error "unexpected argument '${POS[0]}'"
[ "$(id -u)" -eq 0 ] || die "needs root (ip netns, tc)"

case $CMD in
    up)
        [ ${#POS[@]} -eq 1 ] || usage_error "up takes one argument, the number of hosts"
        [[ ${POS[0]} =~ ^[0-9]+$ ]] && [ "${POS[0]}" -ge 1 ] && [ "${POS[0]}" -le $MAX_HOSTS ] ||
            usage_error "bad number of hosts '${POS[0]}' (1..$MAX_HOSTS)"
        [ -n "$RATE" ] || [ -z "$BURST$LATENCY" ] || usage_error "--burst and --latency need --rate"
        do_up "$((10#${POS[0]}))"
        ;;
    down)
        lock
        do_down
        ;;
    status)
        print_status
        ;;
    exec)
        [ ${#POS[@]} -ge 2 ] || usage_error "exec takes a host number and a command"
        [[ ${POS[0]} =~ ^[0-9]+$ ]] || usage_error "bad host number '${POS[0]}'"
        ns="$NAME-h$((10#${POS[0]}))"
        netns_exists "$ns" || die "no host ${POS[0]} in cluster $NAME (namespace $ns)"
        exec ip netns exec "$ns" "${POS[@]:1}"
        ;;
esac
