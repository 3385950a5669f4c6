"""Only the C extension lives here; everything else is in pyproject.toml.

``dnsserver._fastudp`` (the batched UDP answer loop) is optional: where it does not build
(no compiler, not Linux) the server answers UDP through asyncio instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("dnsserver._fastudp", ["dnsserver/_fastudp.c"], optional=True,
                             extra_compile_args=["-Wall", "-Wextra", "-Werror=implicit-function-declaration"])])
