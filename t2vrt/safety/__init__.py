"""Untrusted input and the user's files: one mechanism per class of hazard (torch-free; the runtime uses it).

- paths.py      confine(): every path read from a bundle stays inside the bundle
- integrity.py  sha256 verification of a bundle's files, with a verdict cache outside the bundle
- owned.py      the marker that says "t2vrt wrote this directory"; deleting only what t2vrt wrote
- atomic.py     build in a hidden temp dir, swap into place atomically, clean and recover earlier interrupted runs
- signals.py    SIGTERM/SIGHUP handled like Ctrl-C, so every cleanup path runs
- diskfull.py   ENOSPC from any writer -> "disk full at PATH"
- npy.py        a .npy reader that never unpickles and checks the header before reading a byte of data
- jsonfile.py   a bounded JSON reader (size, nesting depth) for manifests and records
- finite.py     NaN/inf blamed on the stage and the cause that produced it
"""
