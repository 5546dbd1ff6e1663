#!/usr/bin/env bash
# Runs every faxgate test: installs the Debian packages the tests use
# (as real reference tools and network namespaces), then format, lint and
# the whole workspace test suite. This is README's test command and what
# .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  iproute2 iptables python3                           # NAT test: namespaces, MASQUERADE; python3 probes direct reachability
  libtiff-tools netpbm jbigkit-bin jbigkit-testdata   # fax codec reference tools and CCITT pages
  sane-utils poppler-utils qpdf                       # scanner and print tests: scanimage -d test, pdftoppm/pdfinfo/pdfimages, qpdf --check
  cups-ipp-utils cups-client avahi-daemon dbus        # print stage: ippeveprinter/ipptool, lp
  dovecot-imapd dovecot-lmtpd opensmtpd swaks         # command mail: IMAP IDLE watcher, SMTP -> LMTP delivery
  cups-daemon curl                                    # printing through a firewall: a client-side cupsd, the site status page
  strace                                              # durability: a printed file's folder is synced after the rename
  procps                                              # pgrep/pkill: the print tests stop an avahi-daemon they cannot check
  iaxmodem efax                                       # fax over a phone line: two software Class 1 modems (spandsp) and a reference fax program
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The mail tests run their own OpenSMTPD (its queue folder is fixed, so
  # only one may run) and Dovecot on free ports: stop what the packages
  # may have started.
  $SUDO pkill -x smtpd || true
  $SUDO pkill -x dovecot || true
fi

export CARGO_TERM_COLOR=never
# One build from scratch: incremental caches would only double the disk it
# takes. Say how much disk there is, in case a build runs out of it.
export CARGO_INCREMENTAL=0
df -h . | tail -1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
