#!/usr/bin/env python3
"""Run ONE unmodified `secure_chat` peer of BitDataCoin/decentralized-chat against a relay,
drive it to connect to its peer and send one chat message, and report whether the path to
the peer went direct (hole punched) or via the relay.

Their peer (secure_chat/main.py, logic in secure_chat/client/peer_client.py):

    cd REPO/secure_chat && python main.py <Name> <listen_port> <peer_ip> <peer_port> \
        ../keys/<name>_privkey.pem ../keys/<name>_pubkey.pem <relay_ip> <relay_port>

reads chat lines from stdin (one line = one message; EOF ends it) and logs everything through
`logging` on stderr as "HH:MM:SS - text".  It hard-codes the pair: "Alice" relays to "Bob",
every other name relays to "Alice", and the names "Alice"/"Bob" are pinned to the keys in
REPO/keys by config.TRUSTED_FINGERPRINTS.  So --name/--peer must be alice/bob (any case).

Timeline of their peer (from peer_client.py):
  t=0   bind 0.0.0.0:listen_port, send {"type":"register","name":N} to the relay,
        keepalive after 5 s then every 15 s; sleep 2 s.
  t=2   Phase 1: 10 x (signed handshake straight to peer_ip:peer_port, sleep 0.5 s) = 5 s.
  t=7   Phase 2: up to 20 x (handshake via {"type":"relay"} carrying my_public_addr = the
        relay's register_ack your_address, sleep 1 s) until a handshake/key_exchange arrived.
        The receiver of a handshake answers with a key_exchange (RSA-wrapped AES key) via the
        relay and learns the sender's public address from my_public_addr.
  then  Phase 3: 10 x ({"type":"hole_punch",...} to the peer's relay-seen address, sleep
        0.2 s), then 2 s more.  Whoever receives a hole_punch marks the path direct and
        answers hole_punch_ack; receiving a hole_punch_ack also marks it direct.
  Chat messages go straight to that address once the path is marked direct, otherwise via
  the relay; the receiver logs "<Sender>: <text> [DIRECT]" or "<Sender>: <text> [via RELAY]".

Quirk: a peer that receives the relayed handshake while still in Phase 1 leaves Phase 1 with
"Direct connection established!" and marks the path direct without any direct packet.  So
this driver judges "direct" only by packets that really arrived directly: a hole_punch, a
hole_punch_ack, a handshake logged "DIRECTLY", or a chat message logged "[DIRECT]".

Race: if both peers enter Phase 2 within a few ms of each other, both answer each other's
handshake with their own AES key and end up with different keys (messages then fail with
"Message processing failed").  --start-delay (default 0 for Alice, 1.0 s for Bob) keeps two
drivers started together out of that race.

stdout: exactly one line of JSON at the end:
  {"direct": bool, "seconds_to_direct": float|null, "messages_direct": n, "messages_relayed": n}
  direct            a datagram from the peer arrived directly (not as relayed_packet)
  seconds_to_direct seconds from launching their peer to the first such datagram
  messages_*        chat messages from the peer that this peer received direct / via the relay
stderr: their log, prefixed "[peer] ", and one "[driver] summary ..." line.
"""

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

NAMES = {"alice": "Alice", "bob": "Bob"}
DEFAULT_PORT = {"Alice": 9001, "Bob": 9002}
DEFAULT_DELAY = {"Alice": 0.0, "Bob": 1.0}

# log texts of their peer (without the emoji prefixes)
DIRECT_EVIDENCE = ("Received hole punch #", "Received hole punch ACK from")
CHANNEL_UP = "Secure channel established!"
PHASE_DONE = (
    "Direct connection established!",            # Phase 1 returned (maybe bogus, see above)
    "Direct P2P connection established via hole punching!",
    "Hole punching failed, falling back to relay for media",
    "Failed to establish connection",
    "Signaling failed",
)
SEND_REFUSED = ("Secure channel not established yet", "Session expired", "Error sending message")


def log(msg):
    sys.stderr.write(f"[driver] {msg}\n")
    sys.stderr.flush()


class Term(Exception):
    pass


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", required=True, help="checkout of BitDataCoin/decentralized-chat")
    p.add_argument("--relay", required=True, help="relay HOST:PORT (IPv4; their peer binds AF_INET)")
    p.add_argument("--name", required=True, help="alice or bob")
    p.add_argument("--peer", required=True, help="the other one of alice/bob")
    p.add_argument("--timeout", type=float, default=40.0, help="overall bound in seconds (default 40)")
    p.add_argument("--port", type=int, help="local UDP port of their peer (default Alice 9001, Bob 9002)")
    p.add_argument("--peer-ip", default="UNKNOWN",
                   help="peer_ip argument for their Phase 1 direct attempt (default UNKNOWN, as their "
                        "README says for peers behind NAT)")
    p.add_argument("--peer-port", type=int, help="peer_port argument (default the peer's default port)")
    p.add_argument("--message", help="chat line to send (default 'hello from <Name>')")
    p.add_argument("--start-delay", type=float, help="seconds to wait before launching (default Alice 0, Bob 1)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="after their connection phases end, wait up to this long for a direct packet "
                        "before sending (default 5; covers the peer's 10x0.2 s + 2 s punching)")
    p.add_argument("--python", default=sys.executable, help="interpreter for their peer")
    return p.parse_args()


def unknown_resolves_fast(host, port):
    """Their Phase 1 calls sendto((peer_ip, port)), which resolves a name synchronously inside
    their event loop.  'UNKNOWN' normally fails at once (NXDOMAIN / no route to the resolver);
    if the resolver would stall, the loop would stall 10 times.  Check it once."""
    result = {}

    def probe():
        try:
            socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
            result["resolved"] = True
        except OSError:
            result["resolved"] = False

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(0.5)
    return not t.is_alive() and result.get("resolved") is False


def main():
    a = parse_args()
    t_start = time.monotonic()
    deadline = t_start + a.timeout
    outcome = {"direct": False, "seconds_to_direct": None, "messages_direct": 0, "messages_relayed": 0}
    summary = {}

    def finish(code):
        log("summary " + json.dumps(summary, sort_keys=True))
        sys.stdout.write(json.dumps(outcome) + "\n")
        sys.stdout.flush()
        sys.exit(code)

    name, peer = NAMES.get(a.name.lower()), NAMES.get(a.peer.lower())
    if not name or not peer or name == peer:
        log("their peer hard-codes the pair Alice/Bob: use --name alice --peer bob or the reverse")
        summary["error"] = "bad names"
        finish(2)
    host, _, port = a.relay.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        log("--relay must be HOST:PORT")
        summary["error"] = "bad relay"
        finish(2)
    sc_dir = os.path.join(os.path.abspath(a.repo), "secure_chat")
    keys = os.path.join(os.path.abspath(a.repo), "keys")
    if not os.path.isfile(os.path.join(sc_dir, "main.py")):
        log(f"no secure_chat/main.py under {a.repo}")
        summary["error"] = "bad repo"
        finish(2)

    listen_port = a.port or DEFAULT_PORT[name]
    peer_port = a.peer_port or DEFAULT_PORT[peer]
    peer_ip = a.peer_ip
    if peer_ip == "UNKNOWN" and not unknown_resolves_fast("UNKNOWN", peer_port):
        # '<broadcast>' fails in sendto without a DNS lookup (EACCES, no SO_BROADCAST): same
        # effect as an unresolvable name, without stalling their event loop.
        log("resolving 'UNKNOWN' does not fail fast here; passing '<broadcast>' instead")
        peer_ip = "<broadcast>"
    message = a.message or f"hello from {name}"
    delay = DEFAULT_DELAY[name] if a.start_delay is None else a.start_delay

    cmd = [a.python, "-u", "main.py", name, str(listen_port), peer_ip, str(peer_port),
           os.path.join(keys, f"{name.lower()}_privkey.pem"),
           os.path.join(keys, f"{name.lower()}_pubkey.pem"), host, port]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", PYTHONDONTWRITEBYTECODE="1")
    summary["cmd"] = " ".join(cmd)
    summary["cwd"] = sc_dir

    def on_term(signum, frame):
        raise Term()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    proc = None
    t0 = first_direct = None
    try:
        if delay > 0:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=sc_dir, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = queue.Queue()

        def reader():
            for raw in proc.stdout:
                lines.put((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))
            lines.put((time.monotonic(), None))

        threading.Thread(target=reader, daemon=True).start()

        def rel(t):
            return round(t - t0, 3)

        channel_at = phase_done_at = first_direct = sent_at = got_peer_msg_at = None
        sends = 0
        eof = False
        while time.monotonic() < deadline:
            try:
                t, line = lines.get(timeout=0.1)
            except queue.Empty:
                t, line = None, None
            if t is not None and line is None:
                eof = True
                summary["peer_exited"] = proc.poll()
                break
            if line is not None:
                sys.stderr.write(f"[peer] {line}\n")
                text = line.split(" - ", 1)[1] if " - " in line[:12] else line
                if any(e in text for e in DIRECT_EVIDENCE) or (
                        "Received handshake from" in text and "DIRECTLY" in text):
                    if first_direct is None:
                        first_direct = t
                        summary["first_direct_evidence"] = text
                if CHANNEL_UP in text and channel_at is None:
                    channel_at = t
                    summary["channel_at"] = rel(t)
                if any(p in text for p in PHASE_DONE) and phase_done_at is None:
                    phase_done_at = t
                    summary["phases_done"] = [rel(t), text.lstrip("✓✗⚠ ")]
                if text.startswith(f"{peer}: "):
                    if text.endswith(" [DIRECT]"):
                        outcome["messages_direct"] += 1
                        if first_direct is None:
                            first_direct = t
                            summary["first_direct_evidence"] = "chat message [DIRECT]"
                    elif text.endswith(" [via RELAY]"):
                        outcome["messages_relayed"] += 1
                    got_peer_msg_at = got_peer_msg_at or t
                    summary["received_at"] = rel(t)
                if text.startswith(f"{name}: ") and sent_at is not None:
                    summary["sent_route"] = "DIRECT" if text.endswith("[DIRECT]") else "RELAY"
                if "Message processing failed" in text:
                    summary["undecryptable_messages"] = summary.get("undecryptable_messages", 0) + 1
                if any(r in text for r in SEND_REFUSED) and sent_at is not None:
                    sent_at = None  # their peer refused the line; try again later
            now = time.monotonic()
            ready = channel_at is not None and phase_done_at is not None and (
                first_direct is not None or now - phase_done_at >= a.settle)
            if ready and sent_at is None and sends < 3:
                try:
                    proc.stdin.write((message + "\n").encode())
                    proc.stdin.flush()
                except OSError:
                    pass
                sends += 1
                sent_at = now
                summary["sent_at"] = rel(now)
            if sent_at is not None and got_peer_msg_at is not None and \
                    now - max(sent_at, got_peer_msg_at) >= 1.0:
                break
        else:
            summary["timed_out"] = True
    except Term:
        summary["interrupted"] = True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()  # EOF ends their input loop and asyncio.run()
            except OSError:
                pass
            try:
                proc.wait(timeout=1.5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if first_direct is not None:
        outcome["direct"] = True
        outcome["seconds_to_direct"] = round(first_direct - t0, 3)
    finish(0)


if __name__ == "__main__":
    main()
