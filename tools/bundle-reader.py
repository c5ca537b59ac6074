#!/usr/bin/env python3
"""Check an auditflow audit bundle's hash chains with nothing but Python.

Usage: bundle-reader.py BUNDLE.tar.gz   (or a directory holding events.ndjson)

An independent reader of docs/audit-bundle.md: for each line of
events.ndjson it decodes the exact bytes (base64), computes their hash as
auditflow does ("sha256:" + lower-case hex of SHA-256 over the bytes), and
checks that the event's data.prevSeq and data.prevHash name the previous
line of the same subject (none for a change's first line). It does not
check signatures (ed25519 is not in the standard library).
Exit 0 when every link holds, 1 on a break, 2 on an unreadable bundle.
"""
import base64
import hashlib
import json
import os
import sys
import tarfile


def read_events(path):
    if os.path.isdir(path):
        with open(os.path.join(path, "events.ndjson"), "rb") as f:
            return f.read()
    with tarfile.open(path, "r:gz") as tar:
        f = tar.extractfile("events.ndjson")
        if f is None:
            raise ValueError("no events.ndjson in the bundle")
        return f.read()


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        raw = read_events(argv[1])
    except (OSError, KeyError, ValueError, tarfile.TarError) as e:
        print("bundle-reader: %s" % e, file=sys.stderr)
        return 2
    prev = {}  # subject -> (seq, hash) of its previous line
    breaks = count = 0
    for n, text in enumerate(raw.splitlines(), 1):
        if not text.strip():
            continue
        line = json.loads(text)
        seq, subject = line["seq"], line["subject"]
        data = base64.b64decode(line["data"], validate=True)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        count += 1
        try:
            ev = json.loads(data).get("data", {})
        except ValueError:
            ev = None
        if not isinstance(ev, dict):
            print("line %d, sequence %d (%s): not a CloudEvents JSON event" % (n, seq, subject))
            breaks += 1
            prev[subject] = (seq, digest)
            continue
        want_seq, want_hash = prev.get(subject, (0, ""))
        got_seq, got_hash = ev.get("prevSeq", 0), ev.get("prevHash", "")
        if (got_seq, got_hash) != (want_seq, want_hash):
            if want_seq == 0:
                why = "names sequence %d before it, but it is its change's first line" % got_seq
            else:
                why = "names sequence %d (%s) before it, but the previous line of its change is sequence %d (%s)" % (
                    got_seq, got_hash or "no hash", want_seq, want_hash)
            print("line %d, sequence %d (%s): broken chain: %s" % (n, seq, subject, why))
            breaks += 1
        prev[subject] = (seq, digest)
    print("%d events of %d changes, %d broken links" % (count, len(prev), breaks))
    return 1 if breaks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
