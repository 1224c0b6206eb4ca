#!/bin/sh
# System tools for the optional test tiers, installed by `make setup` (so by `make test` and `make demo`).
#   qemu tier : qemu-user-static + binfmt-support (aarch64 under emulation), debootstrap (arm64 root fs)
#   netns tier: iproute2 (ip, tc)          sshd tier: openssh-server + openssh-client
# The aarch64 cross linker is not here: pip's ziglang links aarch64 stage libraries.
# As root with apt-get: installs what is missing (one apt-get update), mounts binfmt_misc and
# enables qemu-aarch64. Otherwise prints the exact commands and exits 0: the tiers then skip
# with their reason. EDGEPLAN_SKIP_SYSTEM_TOOLS=1 skips this step entirely.
set -u
PKGS="qemu-user-static binfmt-support debootstrap iproute2 openssh-server openssh-client"

if [ "${EDGEPLAN_SKIP_SYSTEM_TOOLS:-0}" = 1 ]; then
  echo "setup: EDGEPLAN_SKIP_SYSTEM_TOOLS=1: system tools not checked (qemu/netns/sshd tiers may skip)"
  exit 0
fi

missing=""
command -v qemu-aarch64-static >/dev/null 2>&1 || missing="$missing qemu-user-static"
command -v update-binfmts >/dev/null 2>&1 || missing="$missing binfmt-support"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v tc >/dev/null 2>&1 || missing="$missing iproute2"
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"

binfmt_cmds="mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64"

if [ "$(id -u)" != 0 ]; then
  if [ -n "$missing" ]; then
    echo "setup: not root, so the optional tiers' system tools are not installed; they skip until you run:"
    echo "  sudo apt-get update && sudo apt-get install -y$missing"
    echo "  sudo sh -c '$binfmt_cmds'"
  fi
  exit 0
fi

if [ -n "$missing" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here; install the equivalents of:$missing (the qemu/netns/sshd tiers skip until then)"
    exit 0
  fi
  echo "setup: installing$missing (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; then
    echo "setup: apt-get failed; the tiers needing$missing will skip (retry: apt-get install -y$missing)"
    exit 0
  fi
fi

# aarch64 binaries run under qemu-user once binfmt_misc is mounted and the handler enabled.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
    || echo "setup: binfmt_misc cannot be mounted here (container without privileges?): the qemu tier will skip"
fi
if [ -e /proc/sys/fs/binfmt_misc/status ] && ! grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 \
    || echo "setup: \`update-binfmts --enable qemu-aarch64\` failed: the qemu tier will skip"
fi
exit 0
