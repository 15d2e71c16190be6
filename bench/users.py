#!/usr/bin/env python3
"""Users for the bench: N -> secret pw-N (the same rule kamailio.cfg uses).

users.py USERS_JSON USERS_CSV writes the gateway's user file and SIPp's injection file."""
import json
import sys

users = [{"id": i, "username": str(i), "password": f"pw-{i}", "display_name": f"User {i}"} for i in range(1000, 21000)]
with open(sys.argv[1], "w") as f:
    json.dump(users, f)
with open(sys.argv[2], "w") as f:
    f.write("SEQUENTIAL\n")
    for u in users:
        f.write(f"{u['username']};bench.test;[authentication username={u['username']} password={u['password']}]\n")
