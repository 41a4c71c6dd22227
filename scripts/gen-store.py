#!/usr/bin/env python3
"""Writes a token store of N credentials to standard output, for the store
benchmark:  scripts/gen-store.py 1000000 > big.json

The records look like the ones `sessiongate tokens create` writes (pretty
JSON, hashes only): four tokens to one key, 100 customers, half the
credentials scoped to every site and half to one to three named sites. The
hashes are SHA-256 of made-up secrets; nobody can present them."""
import hashlib
import json
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
records = []
for i in range(n):
    key = i % 5 == 4
    records.append({
        "name": f"{'key' if key else 'token'}-{i:07d}",
        "kind": "key" if key else "token",
        "hash": hashlib.sha256(f"made-up secret {i}".encode()).hexdigest(),
        "hint": f"{'' if key else 'fus_****'}{i % 1000:03d}",
        "customer": f"customer-{i % 100}",
        "sites": "all" if i % 2 == 0 else [f"site-{(i + j) % 50}" for j in range(1 + i % 3)],
        "level": ["standard", "architect", "admin"][i % 3] if key else "standard",
        "created": 1795462584767 + i,
    })
json.dump({"version": 1, "credentials": records}, sys.stdout, indent=2)
sys.stdout.write("\n")
