"""Run in a guest: the state of the running kernel's DO_ONCE static keys, as JSON.

Every ``DO_ONCE()`` (``net_get_random_once()``: the hash secrets of TCP, UDP,
inet_peer, the flow dissector...) has its own static key, ``___once_key.N``,
that the kernel disables by live-patching its code after the first call. The
VM tests compare two snapshots taken around a recording: a key that changes in
between was patched while both vCPUs ran (docs/ci.md, "Live-patched kernel
code under TCG"). Each key is named by the functions whose code tests it (from
the kernel's jump table), so a failure says which path was not warmed.

Reads /proc/kallsyms (CONFIG_KALLSYMS_ALL) and /proc/kcore; root only.
Prints {"keys": {"<function,...>@<address>": enabled, ...}}.
"""

from __future__ import annotations

import bisect
import json
import struct
import sys

JUMP_ENTRY = struct.Struct("<iiq")  # struct jump_entry: s32 code, s32 target, long key (relative)


def kallsyms() -> tuple[dict[str, list[int]], list[tuple[int, str]]]:
    by_name: dict[str, list[int]] = {}
    text: list[tuple[int, str]] = []
    with open("/proc/kallsyms") as f:
        for line in f:
            addr, kind, name = line.split()[:3]
            a = int(addr, 16)
            by_name.setdefault(name, []).append(a)
            if kind in "tT":
                text.append((a, name))
    text.sort()
    return by_name, text


class Kcore:
    """The kernel's memory by virtual address, through /proc/kcore's ELF program headers."""

    def __init__(self) -> None:
        self.f = open("/proc/kcore", "rb")
        head = self.f.read(64)
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        self.f.seek(phoff)
        table = self.f.read(phentsize * phnum)
        self.loads = []
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
            if p_type == 1:  # PT_LOAD
                self.loads.append((p_vaddr, p_filesz, p_offset))

    def read(self, addr: int, n: int) -> bytes:
        for vaddr, size, offset in self.loads:
            if vaddr <= addr and addr + n <= vaddr + size:
                self.f.seek(offset + addr - vaddr)
                return self.f.read(n)
        raise ValueError(f"{addr:#x} is in no segment of /proc/kcore")


def main() -> int:
    by_name, text = kallsyms()
    keys = sorted(a for name, addrs in by_name.items() if name.startswith("___once_key") for a in addrs)
    if not keys:
        print("no ___once_key symbols in /proc/kallsyms (CONFIG_KALLSYMS_ALL?)", file=sys.stderr)
        return 1
    core = Kcore()
    start, stop = by_name["__start___jump_table"][0], by_name["__stop___jump_table"][0]
    table = core.read(start, stop - start)
    users: dict[int, set[str]] = {k: set() for k in keys}
    starts = [a for a, _ in text]
    for off in range(0, len(table) - JUMP_ENTRY.size + 1, JUMP_ENTRY.size):
        code, _, key = JUMP_ENTRY.unpack_from(table, off)
        key_addr = (start + off + 8 + key) & ~3  # the low bits are the entry's flags
        if key_addr in users:
            site = start + off + code
            i = bisect.bisect_right(starts, site) - 1
            users[key_addr].add(text[i][1] if i >= 0 else hex(site))
    state = {}
    for k in keys:
        (enabled,) = struct.unpack("<i", core.read(k, 4))  # struct static_key starts with atomic_t enabled
        state[f"{','.join(sorted(users[k])) or '?'}@{k:#x}"] = enabled
    json.dump({"keys": state}, sys.stdout, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
