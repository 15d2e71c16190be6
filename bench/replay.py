#!/usr/bin/env python3
"""Checks that a registrar runs the bench's scenario: one MD5 challenge with qop="auth", the
answer to it accepted, and the same answer sent again (a new transaction with the same nonce
and nc) refused. make bench compares registrars only when each of them passes, so that none
does less work than the others (a challenge without qop carries no nonce count, and a
registrar that does not count nonces accepts replays).

replay.py HOST:PORT USER SECRET prints one line and exits 1 when a check fails."""
import hashlib
import random
import re
import socket
import sys

host, port = sys.argv[1].rsplit(":", 1)
user, secret = sys.argv[2], sys.argv[3]
domain = "bench.test"  # the domain of users.py's injection file

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(3)
lport = sock.getsockname()[1]
call_id = "replay-%x@127.0.0.1" % random.getrandbits(64)


def register(cseq, authorization=""):
    """Sends one REGISTER (a new branch each time) and returns the final answer's lines."""
    branch = "z9hG4bK-replay-%x" % random.getrandbits(48)
    msg = (
        f"REGISTER sip:{domain} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{domain}>;tag=replay\r\n"
        f"To: <sip:{user}@{domain}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:{lport};transport=UDP>\r\n"
        "Expires: 60\r\n"
        f"{authorization}"
        "Content-Length: 0\r\n\r\n"
    )
    sock.sendto(msg.encode(), (host, int(port)))
    while True:
        lines = sock.recv(65535).decode(errors="replace").split("\r\n")
        if not lines[0].startswith("SIP/2.0 1"):
            return lines


def fail(why):
    print(f"{sys.argv[1]}: {why}")
    sys.exit(1)


try:
    first = register(1)
    if not first[0].startswith("SIP/2.0 401"):
        fail(f"first REGISTER answered {first[0]!r}, want 401")
    challenges = [l for l in first if l.lower().startswith("www-authenticate:")]
    if len(challenges) != 1:
        fail(f"{len(challenges)} challenges, want one")
    chal = challenges[0]
    algorithm = re.search(r'algorithm="?([A-Za-z0-9-]+)', chal)
    if algorithm and algorithm.group(1).upper() != "MD5":
        fail(f"challenge algorithm {algorithm.group(1)}, want MD5")
    if not re.search(r'qop="[^"]*\bauth\b', chal):
        fail('challenge without qop="auth": no nonce count to check')
    realm = re.search(r'realm="([^"]*)"', chal).group(1)
    nonce = re.search(r'nonce="([^"]*)"', chal).group(1)
    uri = f"sip:{domain}"
    ha1 = hashlib.md5(f"{user}:{realm}:{secret}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    cnonce = "%x" % random.getrandbits(32)
    response = hashlib.md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
    authorization = (
        f'Authorization: Digest username="{user}",realm="{realm}",nonce="{nonce}",uri="{uri}",'
        f'response="{response}",algorithm=MD5,qop=auth,nc=00000001,cnonce="{cnonce}"\r\n'
    )
    answer = register(2, authorization)
    if not answer[0].startswith("SIP/2.0 200"):
        fail(f"the answer to the challenge got {answer[0]!r}, want 200")
    replay = register(3, authorization)
    if replay[0].startswith("SIP/2.0 2"):
        fail(f"a replayed nonce count was accepted ({replay[0]!r})")
except socket.timeout:
    fail("no answer within 3 s")
print(f"{sys.argv[1]}: one MD5 challenge with qop=auth, answer accepted, replay refused")
