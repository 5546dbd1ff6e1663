#!/usr/bin/env bash
# Fax over a telephone line: the time faxgate takes to send a document
# through a Class 1 modem, against efax sending the same pages over the
# same line in the same run. The line is two iaxmodem software modems
# (spandsp) joined by an IAX2 call on loopback; efax answers on the far
# side every time. A call is bound by the line rate (V.17 14 400 bit/s)
# and T.30's fixed pauses, so the ratio shows the driver's overhead
# (training, silences, the handshakes' timing), not CPU speed.
#
# A third sender in each round is faxgate to faxgate (`modem receive` on
# B): both offer ECM and MMR, so the pages go MMR-coded in ECM blocks;
# its ratio to efax's time shows what ECM with MMR saves (or costs) on
# the same document and line.
#
# Usage (as root; installs nothing):
#   cargo build --release && scripts/bench-modem.sh [rounds]
# Needs iaxmodem, efax (efix) and netpbm on PATH.
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$0")/.."
faxgate=${FAXGATE:-./target/release/faxgate}
work=$(mktemp -d)
conf=/etc/iaxmodem
tag="fgbench-$$"
pa=$(python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
pb=$(python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mkdir -p "$conf"
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  rm -f "$conf/$tag-a" "$conf/$tag-b"
  rm -rf "$work"
}
pids=()
trap cleanup EXIT
for side in a b; do
  port=$([ $side = a ] && echo "$pa" || echo "$pb")
  printf 'device %s/tty%s\nowner root:root\nmode 660\nport %s\nrefresh 0\nserver 127.0.0.1:%s\npeername %s\nsecret x\ncidname %s\ncidnumber 10%s\ncodec slinear\n' \
    "$work" "$side" "$port" "$pb" "$side" "$side" "$side" > "$conf/$tag-$side"
  iaxmodem "$tag-$side" > "$work/iax-$side.log" 2>&1 &
  pids+=($!)
  sleep 1.2   # libiax2 seeds call numbers from the clock's seconds
done
# Two A4 fine pages of text-like detail (the integration tests' pattern).
python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
def page(seed, rows):
    out = bytearray(b"P4\n1728 %d\n" % rows)
    for y in range(rows):
        bits = []
        for x in range(1728):
            m = (y // 40) % 3
            if m == 0: v = (x // (8 + seed)) % 2 == 0 and y % 40 < 30
            elif m == 1: v = ((x // 16) + (y // 16) + seed) % 2 == 0
            else: v = (x + y * (1 + seed)) % 97 < 6
            bits.append(v)
        for i in range(0, 1728, 8):
            b = 0
            for j in range(8):
                if bits[i + j]: b |= 0x80 >> j
            out.append(b)
    return bytes(out)
p1, p2 = page(0, 600), page(3, 500)
open(f"{w}/p1.pbm", "wb").write(p1)
open(f"{w}/p2.pbm", "wb").write(p2)
open(f"{w}/doc.pbm", "wb").write(p1 + p2)
PY
efix -i pbm -o fax "$work/p1.pbm" > "$work/p1.g3" 2>/dev/null
efix -i pbm -o fax "$work/p2.pbm" > "$work/p2.g3" 2>/dev/null

answer() {  # efax answers one call on B
  efax -d "$work/ttyb" -o1 -kZ -w -iS0=1 -r "$work/rx" > "$work/efax-rx.log" 2>&1 &
  rx=$!
  until grep -q "waiting for activity" "$work/efax-rx.log" 2>/dev/null; do sleep 0.2; done
  sleep 6     # iaxmodem refuses calls for 5 s after the ATZ efax starts with
}
receive_fg() {  # faxgate answers one call on B
  RUST_LOG=info "$faxgate" modem receive --device "$work/ttyb" --calls 1 --out "$work/fgrx" \
    > "$work/fg-rx.out" 2> "$work/fg-rx.log" &
  rx=$!
  until grep -q "Waiting for calls." "$work/fg-rx.log" 2>/dev/null; do sleep 0.2; done
  sleep 6     # iaxmodem refuses calls for 5 s after the setup's ATH0
}
now() { date +%s.%N; }
fg_times=(); efax_times=(); ecm_times=()
for r in $(seq 1 "$rounds"); do
  answer
  t0=$(now)
  "$faxgate" modem send --device "$work/ttya" --to 200 "$work/doc.pbm" > /dev/null
  t1=$(now); wait "$rx"
  fg_times+=("$(echo "$t1 - $t0" | bc)")
  sleep 6     # A's own hangup
  answer
  t0=$(now)
  efax -d "$work/ttya" -o1 -h "" -t 200 "$work/p1.g3" "$work/p2.g3" > "$work/efax-tx.log" 2>&1
  t1=$(now); wait "$rx"
  efax_times+=("$(echo "$t1 - $t0" | bc)")
  sleep 6
  receive_fg
  t0=$(now)
  RUST_LOG=info "$faxgate" modem send --device "$work/ttya" --to 200 "$work/doc.pbm" \
    > /dev/null 2> "$work/fg-tx.log"
  t1=$(now); wait "$rx"
  grep -q "coding: Mmr, ecm: true" "$work/fg-tx.log" || { echo "ECM with MMR was not negotiated" >&2; exit 1; }
  ecm_times+=("$(echo "$t1 - $t0" | bc)")
  sleep 6
  echo "round $r: faxgate ${fg_times[-1]} s, efax ${efax_times[-1]} s, faxgate ECM+MMR ${ecm_times[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
fg=$(median "${fg_times[@]}"); ef=$(median "${efax_times[@]}"); ecm=$(median "${ecm_times[@]}")
echo "median: faxgate $fg s, efax $ef s, ratio (efax time / faxgate time) $(echo "scale=3; $ef / $fg" | bc)"
echo "median: faxgate ECM+MMR to faxgate $ecm s, ratio (efax time / ECM time) $(echo "scale=3; $ef / $ecm" | bc)"
