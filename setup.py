"""Only the C extensions live here; everything else is in pyproject.toml.

Both are optional: where they do not build (no compiler, not Linux) the server answers UDP
through asyncio and reads GeoIP through maxminddb alone.
- ``dnsserver._fastudp``: the batched UDP answer loop;
- ``gslb._mmdb``: the .mmdb search-tree walker (GeoIP record and prefix per address), which
  ``_fastudp`` also uses through a capsule to answer geo names without Python.
"""

from setuptools import Extension, setup

FLAGS = ["-Wall", "-Wextra", "-Werror=implicit-function-declaration"]

setup(ext_modules=[
    Extension("gslb._mmdb", ["gslb/_mmdb.c"], depends=["gslb/_mmdb.h"], optional=True, extra_compile_args=FLAGS),
    Extension("dnsserver._fastudp", ["dnsserver/_fastudp.c"], depends=["gslb/_mmdb.h"], include_dirs=["gslb"],
              optional=True, extra_compile_args=FLAGS),
])
