"""Writing bench/results/<date>-<commit>.md and .json."""

import json
import os
import subprocess

from .procs import ROOT


def machine():
    model, cores = "unknown", 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("processor"):
                    cores += 1
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu_model": model, "cores": cores, "nproc": os.cpu_count(), "mem_mib": mem}


def commit():
    try:
        c = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return (c or "unknown") + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def write_results(s, started, argv):
    m = machine()
    rev = commit()
    stamp = started.strftime("%Y-%m-%d-%H%M%S")
    outdir = s.a.out
    os.makedirs(outdir, exist_ok=True)
    base = os.path.join(outdir, f"{stamp}-{rev}")
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "commit": rev,
        "machine": m,
        "command": argv,
        "quick": s.a.quick,
        "bin_dir": s.a.bin_dir,
        "debug_build": s.a.debug,
        "registry": "zookeeper" if s.a.zk else "local",
        "sections": s.sections,
        "notes": s.notes,
        "failures": s.failures,
        "runs": s.runs,
    }
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    lines = [
        f"# Benchmark {started.strftime('%Y-%m-%d %H:%M')} — commit {rev}",
        "",
        f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['mem_mib']} MiB",
        f"- command: `{' '.join(argv)}`",
        f"- binaries: {'rpc-proxy/rpc-lb from ' + s.a.bin_dir if s.a.bin_dir else 'this commit'}"
        f" ({'DEBUG build: numbers are not meaningful' if s.a.debug else 'release build'})",
        f"- registry: {'ZooKeeper ' + s.a.zk if s.a.zk else 'embedded local directory'}",
        "- everything (client, proxy, LB, workers, service) shares the same cores: compare rows, not machines",
        "",
    ]
    for sec in s.sections:
        lines += [f"## {sec['title']}", ""]
        lines.append("| " + " | ".join(sec["columns"]) + " |")
        lines.append("|" + "---|" * len(sec["columns"]))
        for row in sec["rows"]:
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
        lines.append("")
        for n in sec["notes"]:
            lines.append(f"- {n}")
        if sec["notes"]:
            lines.append("")
    if s.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in s.notes] + [""]
    lines += ["## Result", ""]
    if s.failures:
        lines += [f"- FAILED: {f}" for f in s.failures]
    else:
        lines.append(f"- every reply of {sum(r['counts']['sent'] for r in s.runs):,} requests checked: no wrong or lost reply")
    lines.append("")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines))
    return base
