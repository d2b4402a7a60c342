#!/usr/bin/env python3
"""RSS report for ci/soak.sh: reads the samples (CSV: seconds, then one RSS column in KiB per
server, named `<server>-<allocator>`), prints RSS over time side by side, the growth over the
second half of the run (least-squares slope times the half's length) and draws an SVG chart.

A brkmalloc server fails the check when its RSS keeps growing: its second-half growth is over
10 % of its second-half mean AND more than 1.25 times the same server's growth under glibc
plus 16 MiB (so growth the workload itself causes, visible under glibc too, is not blamed on
the allocator). Runs shorter than 10 minutes (CI's 60 s) are still filling their key spaces
in the second half, and their RSS swings as widely as it grows: they are allowed a quarter of
the mean more. Exit 0 when every brkmalloc server passes, 1 otherwise.

usage: soak_report.py SAMPLES.csv CHART.svg
"""

import csv
import sys

COLORS = {"glibc": "#1f77b4", "brkmalloc": "#d62728"}
DASH = {"redis": "", "memcached": "6,4"}
SHORT_RUN_S = 600


def growth(ts, ys):
    """Least-squares slope (KiB/s) times the time spanned."""
    n = len(ts)
    if n < 3:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var
    return slope * (ts[-1] - ts[0])


def mib(kib):
    return kib / 1024.0


def svg_chart(path, ts, series, title):
    w, h, left, right, top, bottom = 900, 480, 70, 200, 40, 50
    pw, ph = w - left - right, h - top - bottom
    tmax = max(ts[-1], 1)
    ymax = max(max(v) for v in series.values()) * 1.1 or 1
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
        'font-size="12">' % (w, h),
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="%d" y="22" font-size="15">%s</text>' % (left, title),
    ]
    for i in range(6):
        y = top + ph - ph * i / 5
        out.append(
            '<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (left, y, left + pw, y)
        )
        out.append(
            '<text x="%d" y="%.1f" text-anchor="end">%.0f MiB</text>'
            % (left - 6, y + 4, mib(ymax * i / 5))
        )
    for i in range(6):
        x = left + pw * i / 5
        out.append(
            '<text x="%.1f" y="%d" text-anchor="middle">%.0f s</text>'
            % (x, top + ph + 18, tmax * i / 5)
        )
    out.append(
        '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>'
        % (left, top, pw, ph)
    )
    for k, (name, ys) in enumerate(sorted(series.items())):
        server, alloc = name.split("-", 1)
        pts = " ".join(
            "%.1f,%.1f" % (left + pw * t / tmax, top + ph - ph * y / ymax) for t, y in zip(ts, ys)
        )
        out.append(
            '<polyline fill="none" stroke="%s" stroke-width="1.5" stroke-dasharray="%s" '
            'points="%s"/>' % (COLORS.get(alloc, "#000"), DASH.get(server, ""), pts)
        )
        ly = top + 10 + 20 * k
        out.append(
            '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2" '
            'stroke-dasharray="%s"/>'
            % (left + pw + 12, ly, left + pw + 40, ly, COLORS.get(alloc, "#000"), DASH.get(server, ""))
        )
        out.append('<text x="%d" y="%d">%s</text>' % (left + pw + 46, ly + 4, name))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    samples, chart = sys.argv[1], sys.argv[2]
    with open(samples) as f:
        rows = list(csv.reader(f))
    head, rows = rows[0], [r for r in rows[1:] if r and all(c for c in r)]
    ts = [float(r[0]) for r in rows]
    series = {name: [float(r[i + 1]) for r in rows] for i, name in enumerate(head[1:])}
    if len(ts) < 4:
        print("soak_report: only %d samples" % len(ts))
        return 1
    print("RSS over time (MiB):")
    print("%8s " % "t (s)" + " ".join("%20s" % n for n in head[1:]))
    step = max(1, len(ts) // 12)
    for i in list(range(0, len(ts), step)) + ([len(ts) - 1] if (len(ts) - 1) % step else []):
        print("%8.0f " % ts[i] + " ".join("%20.1f" % mib(series[n][i]) for n in head[1:]))
    half = len(ts) // 2
    th = ts[half:]
    grow = {n: growth(th, ys[half:]) for n, ys in series.items()}
    mean = {n: sum(ys[half:]) / len(ys[half:]) for n, ys in series.items()}
    peak = {n: max(ys) for n, ys in series.items()}
    print("\nsecond half (t >= %.0f s): growth from the least-squares slope, mean, peak (MiB)" % th[0])
    failed = False
    for n in head[1:]:
        verdict = ""
        server, alloc = n.split("-", 1)
        if alloc == "brkmalloc":
            base = grow.get(server + "-glibc", 0.0)
            allow = 1.25 * max(base, 0.0) + 16 * 1024
            if ts[-1] < SHORT_RUN_S:
                allow += 0.25 * mean[n]  # still warming up: noisier
            keeps_growing = grow[n] > 0.10 * mean[n] and grow[n] > allow
            verdict = "  FAIL: keeps growing" if keeps_growing else "  ok"
            failed |= keeps_growing
        print(
            "%20s growth %+8.1f  mean %8.1f  peak %8.1f%s"
            % (n, mib(grow[n]), mib(mean[n]), mib(peak[n]), verdict)
        )
    svg_chart(chart, ts, series, "RSS of redis-server and memcached, brkmalloc beside glibc")
    print("chart: %s" % chart)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
