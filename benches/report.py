#!/usr/bin/env python3
"""Turns benches/results/results.jsonl into BENCHMARKS.md (stdout) and results/chart.svg."""
import json, statistics, sys, os

out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
machine = json.load(open(os.path.join(out, "machine.json")))
TARGETS = ["direct", "flowgate-1w", "flowgate-Nw", "flowgate-hyper", "haproxy-1t", "haproxy-2t", "nginx-1w"]
PROXIES = TARGETS[1:]
REF = "haproxy-1t"
WORK = {"get64": "small GET, 64 connections", "get256": "small GET, 256 connections", "post64": "1 KiB POST, 64 connections"}
ORIGINS = [o for o in ("hyper", "nginx") if any(r.get("origin", "hyper") == o for r in rows if "rps" in r)]

def med(v): return statistics.median(v) if v else float("nan")
def rng(v): return f"{min(v):,.0f}–{max(v):,.0f}" if v else "–"
def sel(origin, work, target, key):
    return [r[key] for r in rows if r.get("origin", "hyper") == origin and r.get("work") == work and r["target"] == target]

print("# Benchmarks\n")
print("Produced by `benches/bench.sh` (one interleaved run: every workload measures every target in turn,")
print("each round, with each origin). Loopback only; wrk with 2 threads. Two fast origins stand in for two")
print("Node-RED instances (the first active, the second a backup, health checks on): a one-thread hyper")
print("origin (`benches/origin.rs`) and a one-worker nginx origin answering the same paths. Targets: the")
print("origin directly; flowgate with one worker runtime (`FLOWGATE_WORKERS=1`) and with one per core;")
print("flowgate-hyper: one runtime per core, the fast path off (`listen.fast_path: false`), every request")
print("through hyper; HAProxy with 1 and 2 threads; nginx with 1 worker. Requests go to a flow route")
print("(`/hello`). CPU per request is the proxy's own (user + system, all its threads) over the")
print("measurement; the cores are shared with wrk and the origin.\n")
print(f"Machine: {machine['machine']}. {machine['versions']}. {machine['date']}, "
      f"{machine['rounds']} rounds of {machine['secs']} s per measurement.\n")
print("![requests per second](benches/results/chart.svg)\n")

summary = {}
for origin in ORIGINS:
    print(f"## {origin} origin\n")
    for work, title in WORK.items():
        print(f"### {title}\n")
        print(f"| target | requests/s (median) | range | proxy CPU per request (µs) | requests/s vs {REF} | CPU vs {REF} |")
        print("|---|---|---|---|---|---|")
        ref_rps, ref_cpu = med(sel(origin, work, REF, "rps")), med(sel(origin, work, REF, "cpu_us_per_req"))
        for t in TARGETS:
            v, cpu = sel(origin, work, t, "rps"), sel(origin, work, t, "cpu_us_per_req")
            if not v: continue
            m, c = med(v), med(cpu)
            summary[(origin, work, t)] = (m / ref_rps if ref_rps else float("nan"), c / ref_cpu if ref_cpu else float("nan"), c)
            cpu_s = "–" if t == "direct" else f"{c:.1f}"
            cr = "–" if t == "direct" else f"{c / ref_cpu:.2f}×"
            print(f"| {t} | {m:,.0f} | {rng(v)} | {cpu_s} | {m / ref_rps:.2f}× | {cr} |")
        errs = [f"{r['target']}: {r['errors'].strip()}" for r in rows
                if r.get("origin", "hyper") == origin and r.get("work") == work and r.get("errors", "").strip()]
        if errs:
            print("\nErrors reported by wrk: " + "; ".join(sorted(set(errs))))
        print()

    print("### Latency at a fixed 2,000 requests/s (16 connections)\n")
    print("| target | p50 (µs) | p99 (µs) | p99.9 (µs) | added p50 over direct | added p99 over direct | errors |")
    print("|---|---|---|---|---|---|---|")
    lat = {t: sel(origin, "rate2k", t, "latency") for t in TARGETS}
    base = {k: med([l[k] for l in lat["direct"]]) for k in ("p50_us", "p99_us")}
    for t in TARGETS:
        L = lat[t]
        if not L: continue
        p50, p99, p999 = (med([l[k] for l in L]) for k in ("p50_us", "p99_us", "p999_us"))
        add = "–" if t == "direct" else f"{p50 - base['p50_us']:+.0f}"
        add99 = "–" if t == "direct" else f"{p99 - base['p99_us']:+.0f}"
        summary[(origin, "p99", t)] = p99
        print(f"| {t} | {p50:.0f} | {p99:.0f} | {p999:.0f} | {add} | {add99} | {sum(l['errors'] for l in L)} |")
    print()

print("## Memory with idle connections (hyper origin, fresh processes)\n")
n_idle = next((r["conns"] for r in rows if r.get("work") == "idle"), 0)
n_ws = next((r["conns"] for r in rows if r.get("work") == "ws"), 0)
print(f"Open-file limit of this machine: {machine.get('fd_limit', '?')} (hard); a websocket through a proxy "
      f"needs two descriptors in it, so {n_ws:,} websockets is the most that fits.\n")
print(f"| target | {n_idle:,} idle keep-alive: RSS added | per connection | {n_ws:,} idle websockets: RSS added | per websocket |")
print("|---|---|---|---|---|")
mem = {}
for t in PROXIES:
    cells = []
    for mode in ("idle", "ws"):
        r = next((r for r in rows if r.get("work") == mode and r["target"] == t), None)
        if r:
            added = r["rss_kib"] - r["rss_base_kib"]
            mem[(t, mode)] = added / r["conns"]
            cells += [f"{added/1024:,.1f} MiB", f"{added / r['conns']:.2f} KiB"]
        else:
            cells += ["–", "–"]
    print(f"| {t} | " + " | ".join(cells) + " |")
print()

print("## flowgate against the targets\n")
print(f"Targets: proxy CPU per request ≤ 0.9× {REF}'s and requests/s ≥ 1.10× {REF}'s on each workload and")
print(f"origin; p99 at 2,000 req/s ≤ {REF}'s; RSS per idle keep-alive connection ≤ HAProxy's.\n")
for origin in ORIGINS:
    for work, title in WORK.items():
        for t in ("flowgate-1w", "flowgate-Nw"):
            if (origin, work, t) not in summary: continue
            r, c, us = summary[(origin, work, t)]
            print(f"- {origin} origin, {title}, {t}: requests/s **{r:.2f}×** ({'met' if r >= 1.10 else 'not met'}), "
                  f"CPU per request {us:.1f} µs = **{c:.2f}×** ({'met' if c <= 0.9 else 'not met'})")
    for t in ("flowgate-1w", "flowgate-Nw"):
        if (origin, "p99", t) in summary and (origin, "p99", REF) in summary:
            f, h = summary[(origin, "p99", t)], summary[(origin, "p99", REF)]
            print(f"- {origin} origin, p99 at 2k req/s, {t}: {f:.0f} µs against {h:.0f} µs ({'met' if f <= h else 'not met'})")
for t in ("flowgate-1w", "flowgate-Nw"):
    if (t, "idle") in mem and (REF, "idle") in mem:
        f, h = mem[(t, "idle")], mem[(REF, "idle")]
        print(f"- RSS per idle keep-alive connection, {t}: {f:.2f} KiB, {REF} {h:.2f} KiB ({'met' if f <= h else 'not met'})")

# Chart: grouped bars of median requests/s, hyper origin.
W, H, pad, gw = 1120, 320, 60, 345
colors = {"direct": "#8b98a5", "flowgate-1w": "#79b8ff", "flowgate-Nw": "#2f81f7", "flowgate-hyper": "#a371f7", "haproxy-1t": "#e3b341",
          "haproxy-2t": "#d29922", "nginx-1w": "#3fb950"}
origin = ORIGINS[0] if ORIGINS else "hyper"
vals = {(w, t): med(sel(origin, w, t, "rps")) for w in WORK for t in TARGETS}
top = max([v for v in vals.values() if v == v] or [1]) * 1.1
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{pad}" y="20" font-size="14" font-weight="bold">Median requests/s, {origin} origin (higher is better)</text>']
for gi, w in enumerate(WORK):
    x0 = pad + gi * gw
    for ti, t in enumerate(TARGETS):
        v = vals[(w, t)]
        h = (H - 90) * (v / top) if v == v else 0
        x = x0 + ti * 45
        svg.append(f'<rect x="{x}" y="{H - 50 - h:.0f}" width="38" height="{h:.0f}" fill="{colors[t]}"/>')
        svg.append(f'<text x="{x + 19}" y="{H - 54 - h:.0f}" text-anchor="middle" font-size="10">{v/1000:.0f}k</text>')
    svg.append(f'<text x="{x0 + 155}" y="{H - 30}" text-anchor="middle">{w}</text>')
for ti, t in enumerate(TARGETS):
    svg.append(f'<rect x="{pad + ti * 140}" y="{H - 18}" width="12" height="12" fill="{colors[t]}"/>'
               f'<text x="{pad + ti * 140 + 16}" y="{H - 8}">{t}</text>')
svg.append("</svg>")
open(os.path.join(out, "chart.svg"), "w").write("\n".join(svg) + "\n")

fo_path = os.path.join(out, "failover.jsonl")
if os.path.exists(fo_path):
    fo = [json.loads(l) for l in open(fo_path) if l.strip()]
    print("\n## Failover under load against real Node-RED 4\n")
    print("Produced by `benches/failover.sh`: a GET every 2 ms through the proxy for 6 s; after 2 s the")
    print("active instance is killed (`kill -9`) or its event loop is blocked (`while(true)` in a function")
    print("node). HAProxy is tuned for fast failover (`inter 100ms fall 2 rise 2`, `backup`, `timeout check")
    print("400ms`, `retries 3`, `option redispatch`, canary health check); for it both instances run their")
    print("flows, as HAProxy cannot start or stop them. flowgate runs with its defaults (probe interval")
    print("500 ms, timeout 400 ms, fall 2).\n")
    print("| proxy | failure | failed requests (of ~3,000) | gap to the first answer from the spare (ms) |")
    print("|---|---|---|---|")
    for proxy in ("flowgate", "haproxy"):
        for case, label in (("kill", "kill -9"), ("hang", "hung event loop")):
            rs = [r["result"] for r in fo if r["proxy"] == proxy and r["case"] == case]
            if rs:
                failed = ", ".join(str(r["failed"]) for r in rs)
                gaps = ", ".join(f"{r['gap_ms']:.0f}" for r in rs)
                print(f"| {proxy} | {label} | {failed} | {gaps} (median {med([r['gap_ms'] for r in rs]):.0f}) |")

analysis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")
if os.path.exists(analysis):
    print()
    print(open(analysis).read().rstrip())
