#!/usr/bin/env python3
"""Figures and the final report of scripts/bench.sh.

bench.sh leaves raw outputs (iperf3 -J, vxdp-bench JSON, /proc snapshots) in a directory tree:

    generator/                      flood.json sink.json pps-cpu{0,1}.json settle.txt
    idle/<contender>/               h{1,2}-{0,1}.txt cpu{0,1}.json settle.txt | failed.txt
    rounds/<n>/order.txt            the blocks in the order they ran: <scenario>/<contender> ...
    rounds/<n>/<scenario>/<contender>/
                                    tcp1.json tcp1-cpu{0,1}.json tcp4... sink.json flood.json
                                    rtt.json status-h{1,2}.json settle.txt | failed.txt
                                    tcp1-syscalls.txt tcp1-status{0,1}.json (vxdp only)
                                    links-<ns>-{0,1}.json qdisc-<ns>-{0,1}.json
    unavailable/<contender>.txt     why vxdp refused that backend (the contender is n/a)

Scenarios: `host` (h1 -> h2, the hosts' own addresses) and `pod` (a pod namespace behind cni0
on each host, as flannel's CNI sets it up, pod -> pod across the overlay).

`figure` prints one figure for a progress line; `report` turns the tree into the JSON document
and the markdown table. Only the standard library: it runs on a fresh host.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CONTENDERS = ["underlay", "kernel-vxlan", "vxdp-xdp", "vxdp-kernel", "vxdp-udp"]
BASELINE = "kernel-vxlan"
VXDP = ["vxdp-xdp", "vxdp-kernel", "vxdp-udp"]
SCENARIOS = ["host", "pod"]
SCENARIO_TITLES = {
    "host": "host to host",
    "pod": "pod to pod",
    "host6": "host to host over IPv6",
}
SCENARIO_DESCRIPTIONS = {
    "host": "h1 -> h2 between the hosts' own overlay addresses (the underlay row: 192.0.2.1 -> "
            "192.0.2.2)",
    "host6": "h1 -> h2 between the hosts' IPv6 overlay addresses of a dual-stack network, over an "
             "IPv6 underlay (the underlay row: 2001:db8::1 -> 2001:db8::2); TCP only (the 64 B "
             "and RTT tools speak IPv4)",
    "pod": "a pod namespace on each host behind a cni0 bridge as flannel's CNI sets it up "
           "(bridge + host-local from subnet.env: cni0 = the lease's first address, pod = the "
           "next, MTU = FLANNEL_MTU, ip_forward on), pod on h1 -> pod on h2 across the overlay "
           "(the underlay row: host-gw style routes via the peer's underlay address, MTU 1500, "
           "no encapsulation)",
}
OFFLOAD_MODES = {
    "on": "the kernel's defaults everywhere",
    "off": "ethtool -K ... tso gso gro tx rx off on eth0, the underlay veth peers and the "
           "vxlan links (flannel.1, vxdp's kernel-backend link)",
    "flannel-workaround": "defaults, except ethtool -K <vxlan link> tx-checksum-ip-generic off "
                          "on flannel.1 and vxdp's kernel-backend vxlan link (flannel's "
                          "troubleshooting guide, NAT checksum bug)",
}
# Which side set a small-packet figure. A path that delivered less than KEPT_UP_PCT % of what the
# generator offered dropped the rest: the path is the bound. One that delivered it all but
# received less than GENERATOR_PCT % of the generator's own rate over the raw underlay held the
# sender back: on veth the sending thread's softirq does the kernel path's work (encapsulation,
# forwarding, decapsulation), so a costlier path makes it offer less; the path is the bound again.
# Otherwise the generator may be: the path might go faster than it was driven.
KEPT_UP_PCT = 95
# Below 100: two short measurements of the same path differ by some 10% on a quiet 2-CPU host.
GENERATOR_PCT = 80
# Other processes using more CPUs than this during a test may have held the sender back instead.
BUSY_CPUS = 0.25

# (key, column title, format, lower is better)
METRICS = [
    ("tcp1_gbps", "TCP 1 stream Gbit/s", "{:.2f}", False),
    ("tcp4_gbps", "TCP 4 streams Gbit/s", "{:.2f}", False),
    ("udp64_kpps", "64 B UDP kpps rx", "{:.0f}", False),
    ("udp64_offered_kpps", "64 B UDP kpps offered", "{:.0f}", False),
    ("udp64_delivered_pct", "64 B UDP % delivered", "{:.0f}", False),
    ("rtt_p50_us", "RTT p50 us", "{:.0f}", True),
    ("rtt_p99_us", "RTT p99 us", "{:.0f}", True),
    ("cpu_s_per_gb", "CPU s/GB (machine)", "{:.2f}", True),
    ("cpu_s_per_gb_ours", "CPU s/GB (w/o other procs)", "{:.2f}", True),
    ("syscalls_per_1k_frames", "vxdp syscalls / 1000 frames", "{:.0f}", True),
]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_delta(c0, c1):
    """CPU use between two `vxdp-bench cpustat` snapshots, in CPU seconds and CPUs."""
    if not c0 or not c1:
        return None
    tck = c0["clk_tck"]
    wall = c1["monotonic_s"] - c0["monotonic_s"]
    busy = (c1["busy_ticks"] - c0["busy_ticks"]) / tck
    foreign = max(0, c1["foreign_ticks"] - c0["foreign_ticks"]) / tck
    # Other processes' time cannot exceed what the machine spent: tick sampling of the two
    # counters differs a little.
    foreign = min(foreign, busy)
    return {
        "wall_s": wall,
        "cpus": c0["cpus"],
        "busy_cpu_s": busy,
        "foreign_cpu_s": foreign,
        "ours_cpu_s": busy - foreign,
        "busy_cpus": busy / wall if wall > 0 else None,
        "foreign_cpus": foreign / wall if wall > 0 else None,
    }


def tcp_result(d, name):
    doc = load(os.path.join(d, name + ".json"))
    cpu = cpu_delta(load(os.path.join(d, name + "-cpu0.json")), load(os.path.join(d, name + "-cpu1.json")))
    if not doc or doc.get("error") or "sum_received" not in doc.get("end", {}):
        err = (doc or {}).get("error") or read_text(os.path.join(d, name + ".err")) or "no result"
        return {"error": err, "cpu": cpu}
    end = doc["end"]
    rx = end["sum_received"]
    tx = end.get("sum_sent", {})
    intervals = [i["sum"]["bits_per_second"] / 1e9 for i in doc.get("intervals", []) if "sum" in i]
    gb = rx["bytes"] / 1e9
    r = {
        "gbps": rx["bits_per_second"] / 1e9,
        "bytes": rx["bytes"],
        "seconds": rx.get("seconds"),
        "sender_gbps": tx.get("bits_per_second", 0) / 1e9,
        "retransmits": tx.get("retransmits"),
        "interval_gbps": [round(x, 3) for x in intervals],
        "iperf3_cpu_pct": end.get("cpu_utilization_percent"),
        "cpu": cpu,
    }
    if cpu and gb > 0:
        r["cpu_s_per_gb"] = cpu["busy_cpu_s"] / gb
        r["cpu_s_per_gb_ours"] = cpu["ours_cpu_s"] / gb
    return r


def syscall_result(d):
    """h1's vxdp during the single-stream test: system calls (perf's raw_syscalls:sys_enter,
    all threads) per 1000 frames its workers moved (underlay frames sent and received, TAP
    reads and writes)."""
    text = read_text(os.path.join(d, "tcp1-syscalls.txt"))
    s0, s1 = load(os.path.join(d, "tcp1-status0.json")), load(os.path.join(d, "tcp1-status1.json"))
    if text is None or not s0 or not s1:
        return {}
    calls = None
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == "raw_syscalls:sys_enter" and fields[0].isdigit():
            calls = int(fields[0])
    if calls is None:
        return {"error": (read_text(os.path.join(d, "tcp1-syscalls.err")) or text).strip()[:300]}
    keys = ("underlay_rx_frames", "underlay_tx_frames", "tap_rx_frames", "tap_tx_frames")
    t0, t1 = s0.get("totals") or {}, s1.get("totals") or {}
    moved = {k: t1.get(k, 0) - t0.get(k, 0) for k in keys}
    underlay = moved["underlay_rx_frames"] + moved["underlay_tx_frames"]
    r = {"syscalls": calls, "frames": moved}
    if underlay > 0:
        r["per_1000_underlay_frames"] = 1000.0 * calls / underlay
    return r


def drops(d, c0, c1):
    """Where datagrams were dropped during the small-packet test: non-zero deltas of device,
    qdisc and backlog (softnet) drop counters."""
    out = {}
    # One pair of snapshots per namespace the test crossed: h1, h2 and, pod to pod, p1, p2.
    names = sorted(f[len("links-"):-len("-0.json")] for f in os.listdir(d)
                   if f.startswith("links-") and f.endswith("-0.json"))
    for h in names:
        before = {l["ifname"]: l.get("stats64", {}) for l in load(os.path.join(d, "links-%s-0.json" % h)) or []}
        after = {l["ifname"]: l.get("stats64", {}) for l in load(os.path.join(d, "links-%s-1.json" % h)) or []}
        for dev, st in after.items():
            for way in ("rx", "tx"):
                n = st.get(way, {}).get("dropped", 0) - before.get(dev, {}).get(way, {}).get("dropped", 0)
                if n:
                    out["%s %s %s_dropped" % (h, dev, way)] = n
        q0 = load(os.path.join(d, "qdisc-%s-0.json" % h)) or []
        q1 = load(os.path.join(d, "qdisc-%s-1.json" % h)) or []
        key = lambda q: (q.get("dev"), q.get("handle"), q.get("parent"), q.get("kind"))
        b = {key(q): q.get("drops", 0) for q in q0}
        for q in q1:
            n = q.get("drops", 0) - b.get(key(q), 0)
            if n:
                out["%s %s qdisc %s drops" % (h, q.get("dev"), q.get("kind"))] = n
    if c0 and c1 and "softnet_dropped" in c0:
        n = c1["softnet_dropped"] - c0["softnet_dropped"]
        if n:
            out["backlog (softnet) drops, machine-wide"] = n
    return out


def pps_result(d):
    sink = load(os.path.join(d, "sink.json"))
    flood = load(os.path.join(d, "flood.json"))
    c0, c1 = load(os.path.join(d, "pps-cpu0.json")), load(os.path.join(d, "pps-cpu1.json"))
    cpu = cpu_delta(c0, c1)
    if not sink:
        err = read_text(os.path.join(d, "sink.err")) or read_text(os.path.join(d, "flood.err")) or "no result"
        return {"error": err, "flood": flood, "cpu": cpu}
    where = drops(d, c0, c1)
    if sink.get("socket_drops"):
        where["sink socket drops (receive buffer full)"] = sink["socket_drops"]
    return {
        "rx_pps": sink["pps"],
        "offered_pps": sink.get("offered_pps"),
        "delivered_ratio": sink.get("delivered_ratio"),
        "tx_pps": flood["pps"] if flood else None,
        "flood_cpu_cores": flood.get("cpu_cores") if flood else None,
        "drops_during_test": where,
        "sink": sink,
        "flood": flood,
        "cpu": cpu,
    }


def rtt_result(d):
    doc = load(os.path.join(d, "rtt.json"))
    cpu = cpu_delta(load(os.path.join(d, "rtt-cpu0.json")), load(os.path.join(d, "rtt-cpu1.json")))
    if not doc:
        return {"error": read_text(os.path.join(d, "rtt.err")) or "no result", "cpu": cpu}
    doc["cpu"] = cpu
    return doc


def settle_value(d):
    v = read_text(os.path.join(d, "settle.txt"))
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def contender_round(d):
    failed = read_text(os.path.join(d, "failed.txt"))
    if failed is not None:
        return {"failed": failed}
    r = {
        "foreign_cpus_before": settle_value(d),
        "tcp1": tcp_result(d, "tcp1"),
        "tcp4": tcp_result(d, "tcp4"),
        "udp64": pps_result(d),
        "rtt": rtt_result(d),
        "syscalls": syscall_result(d),
    }
    for h in (1, 2):
        st = load(os.path.join(d, "status-h%d.json" % h))
        if st is not None:
            r.setdefault("vxdp_status", {})["h%d" % h] = st
    return r


def figures(r):
    """The table's figures of one contender in one round (None where missing)."""
    if not r or "failed" in r:
        return {}
    f = {
        "tcp1_gbps": r["tcp1"].get("gbps"),
        "tcp4_gbps": r["tcp4"].get("gbps"),
        "udp64_kpps": r["udp64"]["rx_pps"] / 1e3 if "rx_pps" in r["udp64"] else None,
        "udp64_offered_kpps": r["udp64"]["offered_pps"] / 1e3 if r["udp64"].get("offered_pps") else None,
        "udp64_delivered_pct": 100 * r["udp64"]["delivered_ratio"]
        if r["udp64"].get("delivered_ratio") is not None else None,
        "rtt_p50_us": r["rtt"].get("p50_us"),
        "rtt_p99_us": r["rtt"].get("p99_us"),
        "cpu_s_per_gb": r["tcp1"].get("cpu_s_per_gb"),
        "cpu_s_per_gb_ours": r["tcp1"].get("cpu_s_per_gb_ours"),
        "syscalls_per_1k_frames": (r.get("syscalls") or {}).get("per_1000_underlay_frames"),
    }
    return {k: v for k, v in f.items() if v is not None}


def idle_result(d):
    failed = read_text(os.path.join(d, "failed.txt"))
    if failed is not None:
        return {"failed": failed}
    nodes = {}
    for h in (1, 2):
        a = read_text(os.path.join(d, "h%d-0.txt" % h))
        b = read_text(os.path.join(d, "h%d-1.txt" % h))
        if not a or not b:
            continue
        t0, s0, w0 = a.split()
        t1, s1, w1 = b.split()
        wall = float(w1) - float(w0)
        tck = os.sysconf("SC_CLK_TCK")
        cpu_s = (int(t1) - int(t0)) / tck
        nodes["h%d" % h] = {
            "seconds": wall,
            "cpu_s": cpu_s,
            "cpu_pct_of_one_core": 100 * cpu_s / wall,
            "context_switches_per_s": (int(s1) - int(s0)) / wall,
        }
    return {
        "nodes": nodes,
        "machine": cpu_delta(load(os.path.join(d, "cpu0.json")), load(os.path.join(d, "cpu1.json"))),
        "foreign_cpus_before": settle_value(d),
    }


def udp64_bound(udp, generator_pps):
    """Which side set one small-packet figure (see KEPT_UP_PCT): {"by": "path" or "generator",
    "why": "dropped", "sender held back" or None, "delivered_pct", "of_generator_pct"}."""
    if not udp or udp.get("delivered_ratio") is None or "rx_pps" not in udp:
        return None
    delivered = 100 * udp["delivered_ratio"]
    of_gen = 100 * udp["rx_pps"] / generator_pps if generator_pps else None
    b = {"delivered_pct": delivered, "of_generator_pct": of_gen, "by": "generator", "why": None}
    if delivered < KEPT_UP_PCT:
        b.update(by="path", why="dropped")
    elif of_gen is not None and of_gen < GENERATOR_PCT:
        b.update(by="path", why="sender held back")
        foreign = (udp.get("cpu") or {}).get("foreign_cpus")
        if foreign is not None and foreign > BUSY_CPUS:
            b.update(why="sender held back, host busy", foreign_cpus=foreign)
    return b


def summary_bound(bounds):
    """One contender's bound over its rounds: the generator unless most rounds say the path."""
    bounds = [b for b in bounds if b]
    if not bounds:
        return None
    path = [b for b in bounds if b["by"] == "path"]
    by = "path" if 2 * len(path) > len(bounds) else "generator"
    whys = [b["why"] for b in path]
    return {
        "by": by,
        "why": max(set(whys), key=whys.count) if by == "path" else None,
        "generator_rounds": len(bounds) - len(path),
        "n": len(bounds),
        "delivered_pct": statistics.median(b["delivered_pct"] for b in bounds),
        "of_generator_pct": statistics.median(b["of_generator_pct"] for b in bounds)
        if all(b["of_generator_pct"] is not None for b in bounds) else None,
    }


def kept_up(summary_of_contender):
    """Whether the generator, not the path, may have set a contender's 64 B figure: then that
    figure is a lower bound of the path's rate (marked ≥)."""
    b = summary_of_contender.get("udp64_bound")
    return bool(b) and b["by"] == "generator"


def fmt_bound(b):
    if not b:
        return "n/a"
    of_gen = " of the generator's raw rate" if b["of_generator_pct"] is None else \
        ", %.0f%% of the generator's raw rate" % b["of_generator_pct"]
    if b.get("why") == "own measurement":
        return "**generator** (this is its raw-underlay rate)"
    if b["by"] == "generator":
        cell = "**generator** (no drops%s)" % of_gen
    elif b["why"] == "dropped":
        cell = "path (dropped %.0f%%)" % (100 - b["delivered_pct"])
    elif b["why"] == "sender held back":
        cell = "path (no drops%s)" % of_gen
    else:
        cell = "path? (no drops%s; host busy)" % of_gen
    if 0 < b["generator_rounds"] < b["n"]:
        cell += ", generator in %d of %d rounds" % (b["generator_rounds"], b["n"])
    return cell


def generator_best(gen_dirs):
    """The generator's own rate over the raw underlay: the best of its measurements (the one
    before the rounds, each round's host-to-host underlay block), since other work on the host
    only ever lowers it. That measurement's pps_result, or None."""
    results = [p for p in (pps_result(d) for d in gen_dirs if os.path.isdir(d)) if "rx_pps" in p]
    return max(results, key=lambda p: p["rx_pps"]) if results else None


def generator_pps(gen_dirs):
    best = generator_best(gen_dirs)
    return best["rx_pps"] if best else None


def spread(values):
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def fmt_spread(s, fmt, suffix=""):
    if not s:
        return "n/a"
    med = fmt.format(s["median"]) + suffix
    if s["n"] == 1:
        return med
    return "%s (%s–%s)" % (med, fmt.format(s["min"]), fmt.format(s["max"]))


def cmd_figure(a):
    d = a.dir
    if a.kind in ("generator", "pps"):
        p = pps_result(d)
        if "error" in p:
            return "FAILED: " + p["error"]
        where = ", ".join("%s %d" % kv for kv in p["drops_during_test"].items()) or "none counted"
        bound = ""
        if a.kind == "pps":
            b = udp64_bound(p, generator_pps([a.name]) if a.name else None)
            if b:
                bound = "; bound: %s" % fmt_bound(dict(b, generator_rounds=0, n=1)).replace("**", "")
        return "received %.0f kpps of %.0f kpps offered (%.1f%% delivered; sender %.2f cores; " \
               "drops: %s%s)" % (
                   p["rx_pps"] / 1e3, (p["offered_pps"] or 0) / 1e3, 100 * (p["delivered_ratio"] or 0),
                   p["flood_cpu_cores"] or 0, where, bound)
    if a.kind == "tcp":
        r = tcp_result(d, a.name)
        if "error" in r:
            return "FAILED: " + r["error"]
        extra = ""
        if "cpu_s_per_gb" in r:
            extra = ", %.2f CPU s/GB (%.2f w/o other procs)" % (r["cpu_s_per_gb"], r["cpu_s_per_gb_ours"])
        return "%.2f Gbit/s (retransmits %s%s)" % (r["gbps"], r["retransmits"], extra)
    if a.kind == "rtt":
        r = rtt_result(d)
        if "error" in r:
            return "FAILED: " + r["error"]
        return "p50 %.0f us, p99 %.0f us (%d samples, %d lost)" % (
            r["p50_us"], r["p99_us"], r["samples"], r["lost"])
    if a.kind == "idle":
        r = idle_result(d)
        return ", ".join("%s %.3f%% of a core, %.1f context switches/s" % (
            h, n["cpu_pct_of_one_core"], n["context_switches_per_s"]) for h, n in sorted(r["nodes"].items()))
    raise SystemExit("unknown figure " + a.kind)


def cmd_foreign_cpus(a):
    d = cpu_delta(json.loads(a.before), json.loads(a.after))
    return "%.2f" % (d["foreign_cpus"] or 0)


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None


def cmd_env(a):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dirty = run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
    env = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "vxdp_git_revision": run(["git", "-C", root, "rev-parse", "HEAD"]),
        "vxdp_git_dirty": bool(dirty),
        "vxdp_backends": a.vxdp_backends.split(",") if a.vxdp_backends else None,
        "rustc": run(["rustc", "--version"]),
        "iperf3": (run(["iperf3", "--version"]) or "").splitlines()[0:1],
        "offloads": a.offloads,
        "offloads_meaning": OFFLOAD_MODES.get(a.offloads),
        "options": {
            "rounds": a.rounds,
            "quick": bool(a.quick),
            "scenarios": a.scenarios.split(","),
            "contenders": a.contenders.split(","),
            "tcp_seconds": a.tcp_s,
            "udp_payload_bytes": a.pps_size,
            "udp_window_seconds": a.pps_s,
            "udp_warmup_seconds": a.pps_warmup,
            "flood_threads": a.flood_threads,
            "flood_sweep": [int(n) for n in a.flood_sweep.split(",") if n],
            "nice": a.nice,
            "rtt_samples": a.rtt_count,
            "rtt_interval_us": a.rtt_interval_us,
            "idle_seconds": a.idle_s,
        },
        "method": {
            "topology": "h1, h2: network namespaces, veth eth0 192.0.2.1/2 on a bridge in an underlay "
                        "namespace (bridge-nf-call-* off); a fresh topology per contender, scenario "
                        "and round; h1 sends, h2 receives",
            "scenarios": {s: SCENARIO_DESCRIPTIONS[s] for s in a.scenarios.split(",")},
            "tcp": "iperf3 -J, client on the sending side -> server on the receiving side, receiver "
                   "throughput",
            "udp64": "vxdp-bench flood (sendmmsg, 64-byte payloads, one socket and flow per thread) "
                     "-> vxdp-bench sink (recvmmsg): datagrams received per second over a window "
                     "after a warm-up; offered = what the flood sent in that window (sequence "
                     "numbers); a path that delivered >= %d%% of it kept up, so the generator set "
                     "the figure" % KEPT_UP_PCT,
            "rtt": "vxdp-bench rtt: UDP ping-pong, one datagram in flight, percentiles of "
                   "per-datagram round trips after warm-up samples",
            "cpu_s_per_gb": "non-idle jiffies of all CPUs (/proc/stat) during the 1-stream TCP "
                            "test / GB received; _ours subtracts the CPU time of processes outside "
                            "the benchmark (utime+stime+cutime+cstime of non-kernel processes that "
                            "are not bench.sh or its descendants)",
            "idle": "utime+stime of each vxdp process (/proc/PID/stat) over the idle window, as % "
                    "of one core",
        },
    }
    return json.dumps(env, indent=1)


def scenario_report(scenario, rounds, contenders, unavailable, env, gen_pps):
    """Summary, ratios, markdown table and notes of one scenario."""
    rs = [{"round": r["round"], "contenders": r["scenarios"][scenario]}
          for r in rounds if scenario in r["scenarios"]]
    summary = {}
    for c in contenders:
        per_round = [figures(r["contenders"].get(c)) for r in rs]
        summary[c] = {k: spread([f[k] for f in per_round if k in f]) for k, _, _, _ in METRICS}
        failed = [r["round"] for r in rs if "failed" in r["contenders"].get(c, {})]
        if failed:
            summary[c]["failed_rounds"] = failed
        summary[c]["udp64_bound"] = summary_bound(
            [udp64_bound(r["contenders"][c]["udp64"], gen_pps) for r in rs
             if "udp64" in r["contenders"].get(c, {})])
        if scenario == "host" and c == "underlay" and summary[c]["udp64_bound"]:
            # This row is the generator over the raw underlay: whatever it measured is the
            # generator's rate.
            summary[c]["udp64_bound"].update(by="generator", why="own measurement", generator_rounds=0)

    ratios = {}
    if BASELINE in contenders:
        for c in VXDP:
            if c not in contenders:
                continue
            name = "%s/%s" % (c, BASELINE)
            ratios[name] = {}
            for k, _, _, _ in METRICS:
                s_c, s_b = summary[c].get(k), summary[BASELINE].get(k)
                per = []
                for r in rs:
                    fc = figures(r["contenders"].get(c))
                    fb = figures(r["contenders"].get(BASELINE))
                    if k in fc and fb.get(k):
                        per.append(fc[k] / fb[k])
                if s_c and s_b and s_b["median"]:
                    ratios[name][k] = {
                        "ratio_of_medians": s_c["median"] / s_b["median"],
                        "per_round": spread(per),
                    }
                else:
                    ratios[name][k] = None

    offloads = env.get("offloads")
    lines = []
    head = ["%s · offloads %s" % (SCENARIO_TITLES[scenario], offloads)]
    head += [t for _, t, _, _ in METRICS] + ["64 B bound"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * len(METRICS) + ["---"]) + "|")
    # Columns that describe the generator's side of a contender's own test: no ratio.
    no_ratio = ("udp64_offered_kpps", "udp64_delivered_pct")
    for c in contenders:
        if c in unavailable:
            lines.append("| %s | " % c + " | ".join(["n/a"] * (len(METRICS) + 1)) + " |")
            continue
        cells = []
        for k, _, f, _ in METRICS:
            cell = fmt_spread(summary[c].get(k), f)
            if k == "udp64_kpps" and kept_up(summary[c]):
                cell = "≥ " + cell
            cells.append(cell)
        cells.append(fmt_bound(summary[c].get("udp64_bound")))
        label = c
        if summary[c].get("failed_rounds"):
            label += " (failed in rounds %s)" % ",".join(map(str, summary[c]["failed_rounds"]))
        lines.append("| %s | " % label + " | ".join(cells) + " |")
    for name, rat in ratios.items():
        c = name.split("/")[0]
        cells = []
        for k, _, _, _ in METRICS:
            v = rat.get(k)
            if k in no_ratio:
                cells.append("")
                continue
            if c in unavailable or not v:
                cells.append("n/a")
                continue
            # A figure marked ≥ is a lower bound: so is a ratio over it, or an upper one.
            bound = ""
            if k == "udp64_kpps":
                up_c, up_b = kept_up(summary[c]), kept_up(summary[BASELINE])
                bound = {(False, True): "≤ ", (True, False): "≥ ", (True, True): "~ "}.get((up_c, up_b), "")
            if v["per_round"] and v["per_round"]["n"] > 1:
                cells.append("%s%.2f× (%.2f–%.2f)" % (bound, v["ratio_of_medians"], v["per_round"]["min"],
                                                      v["per_round"]["max"]))
            else:
                cells.append("%s%.2f×" % (bound, v["ratio_of_medians"]))
        cells.append("")
        lines.append("| **%s** | " % name + " | ".join(cells) + " |")

    notes = [SCENARIO_DESCRIPTIONS[scenario][0].upper() + SCENARIO_DESCRIPTIONS[scenario][1:] + "."]
    for c in contenders:
        b = summary.get(c, {}).get("udp64_bound")
        s_rx = summary.get(c, {}).get("udp64_kpps")
        s_off = summary.get(c, {}).get("udp64_offered_kpps")
        if not b or not s_rx or not s_off:
            continue
        of_gen = "" if b["of_generator_pct"] is None else \
            " (%.0f%% of the generator's %.0f kpps over the raw underlay)" % (b["of_generator_pct"], gen_pps / 1e3)
        if b.get("why") == "own measurement":
            notes.append("%s: the generator's own rate over the raw underlay, %.0f kpps (median; "
                         "the best measurement, %.0f kpps, is the reference of the other rows)." % (
                             c, s_rx["median"], gen_pps / 1e3))
        elif b["by"] == "generator":
            notes.append("%s: received %.0f kpps%s with no drops (median): the generator is still the "
                         "bound here, so the 64 B figure is a lower bound of the path's (≥)." % (
                             c, s_rx["median"], of_gen))
        elif b["why"] == "dropped":
            notes.append("%s: received %.0f of %.0f kpps offered (median): the path dropped the "
                         "rest, so it, not the generator, set the 64 B figure." % (
                             c, s_rx["median"], s_off["median"]))
        elif b["why"] == "sender held back":
            notes.append("%s: received all %.0f kpps offered%s: the path's kernel work, done on the "
                         "sender's CPU, held the generator back, so the path set the 64 B figure." % (
                             c, s_rx["median"], of_gen))
        else:
            notes.append("%s: received all %.0f kpps offered%s, but other processes on the host used "
                         "more than %.2f CPUs meanwhile: they, not the path, may have held the "
                         "generator back (rerun on a quiet host)." % (c, s_rx["median"], of_gen, BUSY_CPUS))
    return {
        "summary": summary,
        "ratios": ratios,
        "table_markdown": "\n".join(lines),
        "notes": notes,
    }


def sweep_report(raw, rounds, env):
    """--flood-sweep: per scenario, each contender's 64 B figure per generator thread count, the
    generator's own rate over the raw underlay first."""
    opts = env.get("options", {})
    sweep = opts["flood_sweep"]
    contenders = [c for c in opts.get("contenders", CONTENDERS)]
    rounds_dir = os.path.join(raw, "rounds")
    doc = {"threads": sweep, "generator": {}, "scenarios": {}}
    gen = {}
    for n in sweep:
        dirs = [os.path.join(raw, "generator", "threads-%d" % n)] + [
            os.path.join(rounds_dir, str(r["round"]), "host", "underlay", "threads-%d" % n) for r in rounds]
        best = generator_best(dirs)
        gen[n] = best["rx_pps"] if best else None
        doc["generator"][n] = {"best_pps": gen[n], "best": best, "measurements": len(dirs)}
    out = []
    head = "| threads | generator, raw underlay kpps (sender cores) | " + " | ".join(contenders) + " |"
    rule = "|---:|---:|" + "---:|" * len(contenders)
    for scenario in opts.get("scenarios", SCENARIOS):
        lines = ["### 64 B generator sweep, %s, offloads %s" % (SCENARIO_TITLES[scenario], env.get("offloads")),
                 "", head, rule]
        table = {}
        for n in sweep:
            best = doc["generator"][n]["best"]
            cells = ["%d" % n, "%.0f (%.2f)" % (gen[n] / 1e3, best.get("flood_cpu_cores") or 0)
                     if best else "n/a"]
            for c in contenders:
                ps = [pps_result(os.path.join(rounds_dir, str(r["round"]), scenario, c, "threads-%d" % n))
                      for r in rounds]
                ps = [p for p in ps if "rx_pps" in p]
                if not ps:
                    cells.append("n/a")
                    continue
                b = summary_bound([udp64_bound(p, gen[n]) for p in ps])
                if scenario == "host" and c == "underlay":
                    b.update(by="generator")  # the generator's own raw-underlay measurement
                rx = statistics.median(p["rx_pps"] for p in ps) / 1e3
                table.setdefault(c, {})[n] = {"rx_kpps": rx, "bound": b,
                                              "sender_cores": statistics.median(p["flood_cpu_cores"] or 0 for p in ps)}
                cells.append("%.0f (%.0f%%, %s)" % (rx, b["delivered_pct"],
                                                    "**gen**" if b["by"] == "generator" else "path"))
            lines.append("| " + " | ".join(cells) + " |")
        doc["scenarios"][scenario] = table
        foreign = [p["cpu"]["foreign_cpus"] for r in rounds for c in contenders for n in sweep
                   for p in [pps_result(os.path.join(rounds_dir, str(r["round"]), scenario, c, "threads-%d" % n))]
                   if (p.get("cpu") or {}).get("foreign_cpus") is not None]
        lines += ["", "- Generator: the best of %d measurement(s) per thread count over the raw underlay "
                  "host to host (before the rounds, and each round's host underlay block), with its "
                  "sending threads' CPU use." % (1 + len(rounds)),
                  "- Cells: kpps received (median of %d round(s)), %% delivered of offered, bound: "
                  "path (dropped, or held the sender below %d%% of the generator's raw rate) or "
                  "**gen** (the generator may be the bound)." % (len(rounds), GENERATOR_PCT)]
        if foreign:
            lines.append("- Other processes on the host during these tests: median %.2f, max %.2f CPUs." % (
                statistics.median(foreign), max(foreign)))
        lines.append("")
        out += lines
    return doc, out


def cmd_report(a):
    env = load(a.env) or {}
    raw = a.raw
    doc = {"format": 2, "environment": env}
    env["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    env["total_seconds"] = a.seconds

    gen = pps_result(os.path.join(raw, "generator"))
    gen["foreign_cpus_before"] = settle_value(os.path.join(raw, "generator"))
    doc["generator"] = gen

    unavailable = {}
    un_dir = os.path.join(raw, "unavailable")
    if os.path.isdir(un_dir):
        for f in sorted(os.listdir(un_dir)):
            if f.endswith(".txt"):
                unavailable[f[:-4]] = read_text(os.path.join(un_dir, f))
    doc["unavailable"] = unavailable

    idle = {}
    idle_dir = os.path.join(raw, "idle")
    if os.path.isdir(idle_dir):
        for c in sorted(os.listdir(idle_dir)):
            idle[c] = idle_result(os.path.join(idle_dir, c))
    doc["idle"] = idle

    rounds = []
    rounds_dir = os.path.join(raw, "rounds")
    nums = sorted(int(n) for n in os.listdir(rounds_dir)) if os.path.isdir(rounds_dir) else []
    for n in nums:
        d = os.path.join(rounds_dir, str(n))
        order = (read_text(os.path.join(d, "order.txt")) or "").split()
        scenarios = {}
        for block in order:
            s, c = block.split("/", 1)
            if os.path.isdir(os.path.join(d, s, c)):
                scenarios.setdefault(s, {})[c] = contender_round(os.path.join(d, s, c))
        rounds.append({"round": n, "order": order, "scenarios": scenarios})
    doc["rounds"] = rounds

    opts = env.get("options", {})
    contenders = opts.get("contenders", CONTENDERS)
    scenarios = opts.get("scenarios", SCENARIOS)
    if opts.get("flood_sweep"):
        doc["flood_sweep"], out = sweep_report(raw, rounds, env)
        out += ["- %s: not available in this build (%s)." % kv for kv in unavailable.items()]
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        return "\n".join(out)
    gen_dirs = [os.path.join(raw, "generator")] + [
        os.path.join(rounds_dir, str(r["round"]), "host", "underlay") for r in rounds]
    gen_pps = generator_pps(gen_dirs)
    doc["generator_pps"] = gen_pps
    doc["scenarios"] = {s: scenario_report(s, rounds, contenders, unavailable, env, gen_pps) for s in scenarios}

    # Samples disturbed by other work on the host (other users of a shared machine).
    foreign = []
    for r in rounds:
        for cs in r["scenarios"].values():
            for c, cr in cs.items():
                for t in ("tcp1", "tcp4", "udp64", "rtt"):
                    cpu = (cr.get(t) or {}).get("cpu") if "failed" not in cr else None
                    if cpu and cpu.get("foreign_cpus") is not None:
                        foreign.append(cpu["foreign_cpus"])
    doc["foreign_cpus_during_tests"] = spread(foreign)

    notes = []
    n_rounds = len(rounds)
    nice = opts.get("nice")
    offloads = env.get("offloads")
    notes.append("Medians of %d round%s, (min–max) across rounds; ratios are of the medians, "
                 "(min–max) of the per-round ratios. Offloads %s: %s%s. %s, %s CPUs, vxdp %s%s." % (
                     n_rounds, "" if n_rounds == 1 else "s", offloads,
                     OFFLOAD_MODES.get(offloads, "?"),
                     ", niceness %s" % nice if nice else "", env.get("kernel"),
                     env.get("cpus"), (env.get("vxdp_git_revision") or "?")[:12],
                     " (dirty)" if env.get("vxdp_git_dirty") else ""))
    if gen_pps:
        notes.append("64 B generator (vxdp-bench flood, sendmmsg, %s thread(s)) over the raw underlay "
                     "host to host: %.0f kpps, the best of the measurement before the rounds (%s) and "
                     "each round's host-to-host underlay block. \"64 B bound\" says per contender "
                     "whether the path dropped part of the offered load (delivered < %d%%), held the "
                     "sender below %d%% of that rate without drops (its kernel work runs on the "
                     "sender's CPU), or neither: then the generator may be the bound and the figure "
                     "is marked ≥." % (
                         opts.get("flood_threads"), gen_pps / 1e3,
                         "%.0f kpps at %.2f sender cores" % (gen["rx_pps"] / 1e3, gen.get("flood_cpu_cores") or 0)
                         if "rx_pps" in gen else "failed", KEPT_UP_PCT, GENERATOR_PCT))
    elif "error" in gen:
        notes.append("64 B generator over the raw underlay: FAILED (%s)." % gen["error"])
    for c, r in idle.items():
        if "failed" in r:
            notes.append("Idle %s: failed to start (%s)." % (c, r["failed"]))
            continue
        parts = ["%s %.3f%% of one core (%.1f context switches/s)" % (h, n["cpu_pct_of_one_core"],
                                                                        n["context_switches_per_s"])
                 for h, n in sorted(r["nodes"].items())]
        secs = next(iter(r["nodes"].values()))["seconds"] if r["nodes"] else 0
        notes.append("Idle %s node over %.0f s without traffic: %s." % (c, secs, ", ".join(parts)))
    for c, why in unavailable.items():
        notes.append("%s: not available in this build (%s)." % (c, why))
    fs = doc["foreign_cpus_during_tests"]
    if fs:
        notes.append("Other processes on the host during the tests: median %.2f, max %.2f of %s CPUs%s." % (
            fs["median"], fs["max"], env.get("cpus"),
            " (a shared host: expect noise)" if fs["max"] > 0.25 else ""))
    doc["notes"] = notes

    out = []
    for s in scenarios:
        sr = doc["scenarios"][s]
        out += ["### %s, offloads %s" % (SCENARIO_TITLES[s].capitalize(), offloads), "",
                sr["table_markdown"], ""] + ["- " + n for n in sr["notes"]] + [""]
    out += ["### Run", ""] + ["- " + n for n in notes]
    doc["table_markdown"] = "\n\n".join(doc["scenarios"][s]["table_markdown"] for s in scenarios)

    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return "\n".join(out)


def cmd_pod_addrs(a):
    """cni0's address, the first pod's address and the prefix length for a FLANNEL_SUBNET, as
    host-local allocates them: the gateway is the subnet's first address, pods start after it."""
    import ipaddress
    net = ipaddress.ip_interface(a.subnet).network
    return "%s %s %d" % (net[1], net[2], net.prefixlen)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("figure")
    f.add_argument("kind", choices=["generator", "tcp", "pps", "rtt", "idle"])
    f.add_argument("dir")
    f.add_argument("name", nargs="?")
    fc = sub.add_parser("foreign-cpus")
    fc.add_argument("before")
    fc.add_argument("after")
    pa = sub.add_parser("pod-addrs")
    pa.add_argument("subnet", help="FLANNEL_SUBNET, e.g. 10.244.1.1/24")
    e = sub.add_parser("env")
    e.add_argument("--offloads", required=True)
    e.add_argument("--rounds", type=int, required=True)
    e.add_argument("--quick", type=int, required=True)
    e.add_argument("--scenarios", required=True)
    e.add_argument("--tcp-s", type=float, required=True)
    e.add_argument("--pps-s", type=float, required=True)
    e.add_argument("--pps-warmup", type=float, required=True)
    e.add_argument("--pps-size", type=int, required=True)
    e.add_argument("--flood-threads", type=int, required=True)
    e.add_argument("--flood-sweep", default="")
    e.add_argument("--nice", type=int, required=True)
    e.add_argument("--rtt-count", type=int, required=True)
    e.add_argument("--rtt-interval-us", type=int, required=True)
    e.add_argument("--idle-s", type=float, required=True)
    e.add_argument("--contenders", required=True)
    e.add_argument("--vxdp-backends", default="")
    r = sub.add_parser("report")
    r.add_argument("--raw", required=True)
    r.add_argument("--env", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--seconds", type=int, required=True)
    a = p.parse_args()
    handler = {"figure": cmd_figure, "foreign-cpus": cmd_foreign_cpus, "pod-addrs": cmd_pod_addrs,
               "env": cmd_env, "report": cmd_report}[a.cmd]
    print(handler(a))


if __name__ == "__main__":
    sys.exit(main())
