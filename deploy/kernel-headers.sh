#!/bin/sh
# Make kernel headers available to BCC for the running kernel.
#
# 1. Headers already there (/lib/modules/$(uname -r)/build or kheaders): nothing to do.
# 2. Debian has linux-headers-$(uname -r): install it.
# 3. Otherwise (cloud, WSL and micro-VM kernels): install the distribution's headers
#    and link /lib/modules/$(uname -r)/{build,source} to them. TC programs only use
#    the stable UAPI (__sk_buff, uapi/linux/*.h), so an older tree works for them.
set -eu
release=$(uname -r)
modules=/lib/modules/$release
arch=$(dpkg --print-architecture)

if [ -e "$modules/build/include" ] || [ -e /sys/kernel/kheaders.tar.xz ]; then
    exit 0
fi
if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$release"
    echo "connstats: installed linux-headers-$release"
    exit 0
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$arch" >/dev/null
tree=$(ls -d /usr/src/linux-headers-*-"$arch" | sort -V | tail -n 1)
version=${tree#/usr/src/linux-headers-}
version=${version%-"$arch"}
mkdir -p "$modules"
ln -sfn "$tree" "$modules/build"
ln -sfn "/usr/src/linux-headers-$version-common" "$modules/source"
echo "connstats: kernel $release has no headers package; linked $modules/build -> $tree"
echo "connstats: and $modules/source -> /usr/src/linux-headers-$version-common (Debian's $version headers)"
