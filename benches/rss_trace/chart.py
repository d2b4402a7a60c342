"""SVG line chart of benches/rss_trace/run.sh's CSV (python3 standard library only).

usage: chart.py RSS_TRACE_CSV PHASES_FILE OUT_SVG
"""
import csv
import sys

COLORS = ["#444444", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd"]
W, H, L, R, T, B = 860, 440, 70, 190, 40, 50


def main():
    csv_path, phases_path, out = sys.argv[1:4]
    series = {}
    for row in csv.DictReader(open(csv_path)):
        series.setdefault(row["allocator"], []).append(
            (float(row["t_ms"]), int(row["rss_kib"]) / 1024))
    phases = [l.split()[2:4] for l in open(phases_path) if l.startswith("# phase")]
    tmax = max(t for s in series.values() for t, _ in s)
    ymax = max(v for s in series.values() for _, v in s) * 1.08
    x = lambda t: L + (W - L - R) * t / tmax
    y = lambda v: H - B - (H - T - B) * v / ymax
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">RSS over time: a burst '
         f'of large blocks (1-8 MiB), hold, free, then idle</text>']
    step = 50 if ymax > 200 else 20
    for v in range(0, int(ymax) + 1, step):
        o.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    for t in range(0, int(tmax) + 1, 500):
        o.append(f'<text x="{x(t):.1f}" y="{H - B + 16}" text-anchor="middle">{t}</text>')
    o.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">time (ms)</text>')
    o.append(f'<text x="16" y="{(T + H - B) / 2}" transform="rotate(-90 16 {(T + H - B) / 2})" '
             f'text-anchor="middle">RSS (MiB, /proc/self/statm)</text>')
    for name, t in phases:
        o.append(f'<line x1="{x(float(t)):.1f}" x2="{x(float(t)):.1f}" y1="{T}" y2="{H - B}" '
                 f'stroke="#999" stroke-dasharray="4 3"/>')
        o.append(f'<text x="{x(float(t)) + 3:.1f}" y="{T + 12}" fill="#666">{name}</text>')
    o.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" '
             f'stroke="#333"/>')
    for i, (name, pts) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        o.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{path}"/>')
        o.append(f'<line x1="{W - R + 12}" x2="{W - R + 34}" y1="{T + 14 + 20 * i}" '
                 f'y2="{T + 14 + 20 * i}" stroke="{c}" stroke-width="3"/>')
        o.append(f'<text x="{W - R + 40}" y="{T + 18 + 20 * i}">{name}</text>')
    o.append("</svg>")
    open(out, "w").write("\n".join(o) + "\n")


if __name__ == "__main__":
    main()
