"""bake's sandbox cloud: moto's server plus what moto lacks, on loopback.

Importing `bake_sandbox.app` patches moto in this process; `make_app()` returns the WSGI app.
"""
