#!/usr/bin/env python3
"""Generates src/admin/worldmap.path: the land outline of the status page.

Input: land-110m.json from the npm package `world-atlas` (TopoJSON of
Natural Earth's 1:110m land polygons; Natural Earth is public domain).
Fetch it with `npm pack world-atlas && tar xzf world-atlas-*.tgz`, then:

    python3 src/admin/gen_worldmap.py package/land-110m.json > src/admin/worldmap.path

Output: one SVG path `d` string in an equirectangular projection on a
720 x 360 canvas (x = (lon + 180) * 2, y = (90 - lat) * 2), i.e. half a
degree per unit, rounded to whole units. Standard library only; run once,
the output is committed and embedded with include_str!.
"""

import json
import sys

SCALE = 2  # canvas units per degree: 0.5 degree resolution


def decode_arcs(topo):
    """Absolute lon/lat points of every arc (TopoJSON delta + quantization)."""
    tr = topo.get("transform")
    arcs = []
    for arc in topo["arcs"]:
        pts = []
        x = y = 0
        for p in arc:
            if tr:
                x += p[0]
                y += p[1]
                lon = x * tr["scale"][0] + tr["translate"][0]
                lat = y * tr["scale"][1] + tr["translate"][1]
            else:
                lon, lat = p[0], p[1]
            pts.append((lon, lat))
        arcs.append(pts)
    return arcs


def ring_points(ring, arcs):
    """A ring is a list of arc indices; ~i means arc i reversed."""
    out = []
    for i in ring:
        pts = arcs[i] if i >= 0 else list(reversed(arcs[~i]))
        # consecutive arcs share their joining point
        out.extend(pts if not out else pts[1:])
    return out


def project(lon, lat):
    return (round((lon + 180.0) * SCALE), round((90.0 - lat) * SCALE))


def unwrap(pts):
    """Rings crossing the antimeridian (Fiji, Chukotka) jump across the
    whole map; make their x continuous and draw a second copy shifted by
    the map's width, so the canvas edge clips both halves cleanly."""
    width = 360 * SCALE
    out = [pts[0]]
    shift = 0
    closed = pts + [pts[0]]  # the closing segment may cross too
    for (x0, _), (x, y) in zip(closed, closed[1:]):
        if x - x0 > width // 2:
            shift -= width
        elif x0 - x > width // 2:
            shift += width
        out.append((x + shift, y))
    if shift != 0:
        return [pts]  # goes around a pole: leave as drawn
    out.pop()  # the repeated first point
    xs = [x for x, _ in out]
    copies = [out]
    if min(xs) < 0:
        copies.append([(x + width, y) for x, y in out])
    if max(xs) > width:
        copies.append([(x - width, y) for x, y in out])
    return copies


def subpath(pts):
    x0, y0 = pts[0]
    rel = []
    px, py = x0, y0
    for x, y in pts[1:]:
        rel.append(f"{x - px} {y - py}")
        px, py = x, y
    return f"M{x0} {y0}l" + " ".join(rel) + "z"


def polygons(geom):
    t = geom["type"]
    if t == "Polygon":
        yield geom["arcs"]
    elif t == "MultiPolygon":
        yield from geom["arcs"]
    elif t == "GeometryCollection":
        for g in geom["geometries"]:
            yield from polygons(g)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_worldmap.py land-110m.json > worldmap.path")
    with open(sys.argv[1], encoding="utf-8") as f:
        topo = json.load(f)
    arcs = decode_arcs(topo)
    parts = []
    for obj in topo["objects"].values():
        for poly in polygons(obj):
            for ring in poly:
                pts = []
                for lon, lat in ring_points(ring, arcs):
                    p = project(lon, lat)
                    if not pts or pts[-1] != p:
                        pts.append(p)
                if len(pts) > 1 and pts[0] == pts[-1]:
                    pts.pop()
                if len(set(pts)) < 3:
                    continue  # too small to see at half a degree
                for copy in unwrap(pts):
                    parts.append(subpath(copy))
    sys.stdout.write("".join(parts) + "\n")


if __name__ == "__main__":
    main()
