"""Importers: bring releases from other archive tools into an archive of ours.

Each importer reads the other tool's storage through our backends' read primitives (so it
works on every storage kind we can read), never writes to it, and publishes through the
same all-blobs-first, pointer-last path as a publish.
"""
