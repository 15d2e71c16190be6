#!/usr/bin/env python3
"""Appends the issue-6 targets, each with its measured value and a met/missed verdict, to a
RESULTS.md written by run.sh. Usage: bench/targets.py RESULTS.md"""
import math
import re
import sys

path = sys.argv[1]
text = open(path).read()
rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]


def find(*prefix):
    for r in rows:
        if all(r[i].startswith(p) for i, p in enumerate(prefix)):
            return r
    return None


def num(s):
    m = re.search(r"[\d.]+", s or "")
    return float(m.group()) if m else None


out = ["", "## Targets (issue 6)", "", "Ratios here are cut (not rounded) to three decimals, so that one just under a target does not read as equal to it. Token-check ratios are the medians of the rounds' paired ratios (part 1); SIP ratios are of the registrars' best rounds, every round's rate is in part 2.", "", "| target | measured | verdict |", "|---|---|---|"]


def x3(r):
    """r cut to three decimals: 0.89986 reads 0.899, never 0.900."""
    return f"{math.floor(r * 1000) / 1000:.3f}"


def add(target, measured, ok):
    out.append(f"| {target} | {measured} | {'met' if ok else '**missed**' if ok is not None else 'not measured'} |")


for store in ("memory", "redis"):
    resp = find(store, "`respond`")
    unp = find(store, "file, unprotected")
    cma = find(store, "`check-media-access`")
    guard = find(store, "file behind `softphone_guard`")
    fal = find(store, "file behind `forward_auth` (`transport softphone`")
    fa = find(store, "file behind `forward_auth` → `check-media-access` over loopback")
    if not (resp and unp and cma and guard and fa and fal):
        continue
    # The ratio column holds the median of the rounds' paired ratios (run.sh's pratio).
    r = num(cma[5])
    add(f"`check-media-access` ≥ 0.9× `respond` ({store} store)", f"{x3(r)}×", r >= 0.9)
    r = num(guard[5])
    add(f"`softphone_guard` ≥ 0.9× unprotected ({store} store)", f"{x3(r)}×", r >= 0.9)
    r = num(fal[5])
    add(f"`forward_auth` ≥ 0.5× unprotected ({store} store), `transport softphone`", f"{x3(r)}×", r >= 0.5)
    r = num(fa[5])
    ceiling = find(store, "file behind `forward_auth` → bare")
    note = f" (forward_auth to a bare `respond 200` over loopback: {x3(num(ceiling[5]))}×)" if ceiling else ""
    add(f"`forward_auth` ≥ 0.5× unprotected ({store} store), over loopback", f"{x3(r)}×{note}", r >= 0.5)

kam = find("Kamailio")
for store, want in (("memory", 1.0), ("redis", 0.7)):
    sc = find(f"sipsidecar, {store} store")
    if kam and sc and num(kam[1]):
        r = num(sc[1]) / num(kam[1])
        floor = "≥ " if "≥" in kam[1] else ""
        add(f"sidecar REGISTER ≥ {want}× Kamailio ({store} store)", f"{num(sc[1]):.0f}/s vs {floor}{num(kam[1]):.0f}/s = {'≤ ' if floor else ''}{x3(r)}×", r >= want)

for label in ("gateway → Nchan", "gateway, embedded broker"):
    for mode in ("longpoll", "eventsource"):
        r = find(label, mode, "10000")
        if not r:
            continue
        p99, kib, delivered = num(r[5]), num(r[7]), num(r[3])
        add(f"10k {mode} subscribers ({label}): p99 ≤ 1 s", f"{p99:.0f} ms", p99 <= 1000)
        add(f"10k {mode} subscribers ({label}): ≤ 20 KiB each", f"{kib} KiB", kib is not None and kib <= 20)
        add(f"10k {mode} subscribers ({label}): none lost", f"{delivered:.0f} delivered", delivered == 10000)

for name in ("BenchmarkVerify-", "BenchmarkVerifyUncached-"):
    r = next((x for x in rows if x[0].startswith(name)), None)
    if r:
        ns, allocs = num(r[1]), num(r[3])
        what = "repeated token (cache)" if "Uncached" not in name else "first sight of a token (full parse)"
        add(f"token verify ≤ 3 µs and ≤ 30 allocs, {what}", f"{ns/1000:.2f} µs, {allocs:.0f} allocs", ns <= 3000 and allocs <= 30)

open(path, "a").write("\n".join(out) + "\n")
