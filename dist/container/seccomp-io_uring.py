#!/usr/bin/env python3
"""Writes a container runtime's seccomp profile with io_uring allowed, for `udp-relay --io uring`.

usage: seccomp-io_uring.py DEFAULT.json OUT.json

DEFAULT.json is the runtime's own default profile (containers-common installs podman's as
/usr/share/containers/seccomp.json; Docker publishes its default as profiles/seccomp/default.json
in its source). The three io_uring system calls are added to the profile's first unconditional
allow rule, and removed from any rule that refuses them; nothing else changes.
"""
import json
import sys

IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]


def allow_io_uring(profile):
    rules = profile.setdefault("syscalls", [])
    for rule in rules:
        if rule.get("action") != "SCMP_ACT_ALLOW":
            rule["names"] = [n for n in rule.get("names", []) if n not in IO_URING]
    rules[:] = [r for r in rules if r.get("names") or r.get("action") == "SCMP_ACT_ALLOW"]
    plain = next(
        (r for r in rules
         if r.get("action") == "SCMP_ACT_ALLOW" and not r.get("args") and not r.get("includes")
         and not r.get("excludes")),
        None,
    )
    if plain is None:
        plain = {"names": [], "action": "SCMP_ACT_ALLOW"}
        rules.append(plain)
    plain["names"] = plain.get("names", []) + [n for n in IO_URING if n not in plain.get("names", [])]
    return profile


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    with open(sys.argv[1]) as f:
        profile = json.load(f)
    if profile.get("defaultAction") is None:
        sys.exit(f"{sys.argv[1]}: not a seccomp profile (no defaultAction)")
    with open(sys.argv[2], "w") as f:
        json.dump(allow_io_uring(profile), f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
