"""Turn Natural Earth's 110m land (TopoJSON from the world-atlas npm package) into the SVG
path the application map draws: equirectangular, 1000 x 500, coordinates rounded to 0.1.

Usage: python tools/world_svg.py land-110m.json > gslb/api/static/world.path
(The output is committed; the page needs no build step.)
"""

from __future__ import annotations

import json
import sys


def decode_arcs(topo: dict) -> list[list[tuple[float, float]]]:
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def ring(indexes: list[int], arcs: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for index in indexes:
        arc = arcs[index] if index >= 0 else list(reversed(arcs[~index]))
        points.extend(arc if not points else arc[1:])
    return points


def unwrap(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Undo the jumps of a ring that crosses the 180th meridian: keep each step under half
    the map's width, letting x run past 0 or 1000."""
    out: list[tuple[float, float]] = []
    offset = 0.0
    for x, y in points:
        if out:
            step = x + offset - out[-1][0]
            if step > 500:
                offset -= 1000
            elif step < -500:
                offset += 1000
        out.append((x + offset, y))
    return out


def main(path: str) -> None:
    with open(path) as f:
        topo = json.load(f)
    arcs = decode_arcs(topo)
    parts = []
    for geometry in topo["objects"]["land"]["geometries"]:
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        for polygon in polygons:
            for indexes in polygon:
                pts = unwrap([((lon + 180) * 1000 / 360, (90 - lat) * 500 / 180)
                              for lon, lat in ring(indexes, arcs)])
                low, high = min(x for x, _ in pts), max(x for x, _ in pts)
                # a ring that crosses the 180th meridian is drawn unbroken, then again one map
                # width over, so each side of the map shows its half (the viewBox clips the rest)
                for shift in [0] + ([-1000] if high > 1000 else []) + ([1000] if low < 0 else []):
                    parts.append("M" + "L".join(f"{round(x + shift, 1):g},{round(y, 1):g}" for x, y in pts) + "Z")
    sys.stdout.write("".join(parts) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
