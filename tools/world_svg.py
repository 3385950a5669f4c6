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


def main(path: str) -> None:
    with open(path) as f:
        topo = json.load(f)
    arcs = decode_arcs(topo)
    parts = []
    for geometry in topo["objects"]["land"]["geometries"]:
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        for polygon in polygons:
            for indexes in polygon:
                pts = [(round((lon + 180) * 1000 / 360, 1), round((90 - lat) * 500 / 180, 1))
                       for lon, lat in ring(indexes, arcs)]
                parts.append("M" + "L".join(f"{x:g},{y:g}" for x, y in pts) + "Z")
    sys.stdout.write("".join(parts) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
