"""benches/queue-flush.png from benches/out/queue.json (written by bench_queue.py).

Run with the benchmark venv:  benches/out/venv/bin/python benches/plot.py
Left: messages/s per agent per case (log scale). Right: peak RSS summed over each agent's
processes during the STARTTLS + AUTH flush (log scale).
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BENCHES = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(BENCHES, "out", "queue.json")
PNG = os.path.join(BENCHES, "queue-flush.png")


def short(agent: str) -> str:
    return (
        agent.replace("HOST_CONCURRENCY ", "HC")
        .replace(" (`dma -q`)", "")
        .replace(" (`nullmailer-send`)", "")
        .replace(" (N invocations in a row, no queue)", " (loop)")
        .replace(", VERIFYCERT", "")
        .replace(", no VERIFYCERT", ", no verify")
    )


def main() -> None:
    with open(DATA) as f:
        data = json.load(f)
    cases = data["cases"]
    runs = data["runs"]
    agents: list[str] = []
    for r in runs:
        r["agent"] = short(r["agent"])  # "ours, HC2" is one series across cases
        if r["agent"] not in agents:
            agents.append(r["agent"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.8 / len(agents)
    colors = plt.get_cmap("tab10")
    for i, agent in enumerate(agents):
        xs, ys = [], []
        for j, (key, _title, _n) in enumerate(cases):
            r = next((r for r in runs if r["case"] == key and r["agent"] == agent), None)
            if r and r["seconds"]:
                xs.append(j + (i - (len(agents) - 1) / 2) * width)
                ys.append(r["n"] / r["seconds"])
        bars = ax.bar(xs, ys, width, label=agent, color=colors(i))
        for bar, y in zip(bars, ys, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                y,
                f"{y:,.0f}",
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
            )
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([t.replace(", ", "\n", 1) for _, t, _ in cases], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("messages/s (log scale)")
    ax.set_title("Queue flush to a loopback sink (higher is better)")
    ax.legend(fontsize=7, loc="upper right")
    rss = [r for r in runs if r.get("rss")]
    names = [short(r["agent"]) for r in rss]
    vals = [r["rss"][0] / 1024 for r in rss]
    cidx = [agents.index(r["agent"]) for r in rss]
    bars = ax2.barh(names, vals, color=[colors(i) for i in cidx])
    for bar, r in zip(bars, rss, strict=True):
        ax2.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {bar.get_width():,.0f} MiB, {r['rss'][2]} proc",
            va="center",
            fontsize=7,
        )
    ax2.set_xscale("log")
    ax2.invert_yaxis()
    ax2.set_xlabel("peak RSS summed over processes, MiB (log scale)")
    ax2.set_title(f"Memory during the {cases[0][1].split(',')[0]} TLS+AUTH flush")
    ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    print(f"wrote {PNG}")


if __name__ == "__main__":
    main()
