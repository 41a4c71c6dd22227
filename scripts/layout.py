#!/usr/bin/env python3
"""The house rules a compiler does not check, run by scripts/test.sh:

- no import circle between a crate's modules (`crate::a` in b and
  `crate::b` in a, directly or through others; a folder module and its own
  children are one concern and not counted);
- no source file over 700 lines outside tests (a file's `#[cfg(test)] mod
  tests` block, `tests.rs` files and `tests/` folders are tests);
- a crate depends only on the workspace's crates the README's "What is in
  the box" lets it use (ALLOWED below; dev-dependencies are free).

    scripts/layout.py             # check every crate; exit 1 on a breach
    scripts/layout.py --self-test # prove it finds a circle and a long file
"""
import os
import re
import sys

import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 700

# Which of the workspace's crates each may depend on (the README's table).
ALLOWED = {
    "sessiongate-core": set(),
    "sessiongate-etcd": {"sessiongate-core"},
    "sessiongate-store": {"sessiongate-core", "sessiongate-etcd"},
    "sessiongate-plugin": {"sessiongate-core", "sessiongate-etcd"},
    "sessiongate-edge-worker": {"sessiongate-core"},
    "sessiongate-spin": {"sessiongate-core"},
    "sessiongate-spin-wasip2": {"sessiongate-core", "sessiongate-spin"},
    "sessiongate-conformance": set(),
    "sessiongate-shared-data": set(),
    "sessiongate-filter-host": {"sessiongate-core", "sessiongate-shared-data"},
    "sessiongate-component-host": {
        "sessiongate-core",
        "sessiongate-etcd",
        "sessiongate-shared-data",
        # The component's configuration key.
        "sessiongate-spin",
    },
    "sessiongate": {
        "sessiongate-core",
        "sessiongate-etcd",
        "sessiongate-store",
        "sessiongate-shared-data",
        "sessiongate-filter-host",
        "sessiongate-component-host",
        # The component's constants, the Worker's credential-store wire.
        "sessiongate-spin",
        "sessiongate-edge-worker",
    },
}
TEST_BLOCK = re.compile(r"^#\[cfg\(test\)\]\s*\n\s*mod tests\b", re.M)


def crates(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("target", "node_modules", ".git", "fuzz")]
        if "Cargo.toml" in filenames and os.path.isdir(os.path.join(dirpath, "src")):
            yield dirpath


def without_tests(text):
    m = TEST_BLOCK.search(text)
    return text[: m.start()] if m else text


def sources(crate):
    src = os.path.join(crate, "src")
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d != "tests"]
        for f in filenames:
            if f.endswith(".rs") and f != "tests.rs":
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, src)[:-3].split(os.sep)
                if rel[-1] == "mod":
                    rel = rel[:-1]
                if rel in (["lib"], ["main"]):
                    rel = []
                yield path, rel


def module_graph(crate):
    src = os.path.join(crate, "src")
    graph = {}
    for path, rel in sources(crate):
        text = without_tests(open(path, encoding="utf-8").read())
        # Modules are named to the second level: `serve::handle`.
        me = "::".join(rel[:2]) if rel else "(root)"
        deps = set()

        def name(a, b):
            nested = b and os.path.isdir(os.path.join(src, a))
            return a + "::" + b if nested else a

        for m in re.finditer(r"crate::(\w+)(?:::(\w+))?", text):
            deps.add(name(m.group(1), m.group(2)))
        for m in re.finditer(r"use crate::\{([^}]*)\}", text):
            for item in re.finditer(r"(\w+)(?:::(\w+))?", m.group(1)):
                deps.add(name(item.group(1), item.group(2)))
        if len(rel) > 1:
            for m in re.finditer(r"super::(\w+)", text):
                deps.add("::".join(rel[:-1] + [m.group(1)]))
        graph.setdefault(me, set()).update(deps)
    for me, deps in graph.items():
        graph[me] = {
            d for d in deps
            if d in graph and d != me and not d.startswith(me + "::") and not me.startswith(d + "::")
        }
    return graph


def circles(graph):
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def workspace_dependencies(manifest):
    """The crate's name and the `sessiongate*` crates of its [dependencies]."""
    name, deps, section = None, set(), None
    for line in open(manifest, encoding="utf-8"):
        line = line.strip()
        if line.startswith("["):
            section = line
            continue
        m = re.match(r'name\s*=\s*"([^"]+)"', line)
        if section == "[package]" and m:
            name = m.group(1)
        m = re.match(r"(sessiongate[\w-]*)\s*[.=]", line)
        if m and section is not None and section.endswith("dependencies]") and "dev-" not in section:
            deps.add(m.group(1))
    return name, deps


def breaches_in(root, allowed=None):
    allowed = ALLOWED if allowed is None else allowed
    breaches = []
    for crate in sorted(crates(root)):
        name = os.path.relpath(crate, root)
        package, deps = workspace_dependencies(os.path.join(crate, "Cargo.toml"))
        if package in allowed:
            for dep in sorted(deps - allowed[package]):
                breaches.append(f"{name}: {package} may not depend on {dep}")
        elif package is not None and package.startswith("sessiongate") and name != "fuzz":
            breaches.append(f"{name}: {package} is not in scripts/layout.py's ALLOWED")
        for part in circles(module_graph(crate)):
            breaches.append(f"{name}: import circle between {', '.join(part)}")
        for path, _ in sources(crate):
            lines = without_tests(open(path, encoding="utf-8").read()).count("\n")
            if lines > MAX_LINES:
                breaches.append(f"{os.path.relpath(path, root)}: {lines} lines outside tests (at most {MAX_LINES})")
    return breaches


def self_test():
    """A crate with a circle (a → b → a), a long file and a long test block."""
    with tempfile.TemporaryDirectory() as root:
        src = os.path.join(root, "demo", "src")
        os.makedirs(os.path.join(src, "serve"))
        with open(os.path.join(root, "demo", "Cargo.toml"), "w") as f:
            f.write('[package]\nname = "demo"\n[dependencies]\nsessiongate-proxy = { path = ".." }\n'
                    '[dev-dependencies]\nsessiongate-core = { path = ".." }\n')
        files = {
            "lib.rs": "mod a;\nmod b;\nmod serve;\n",
            "a.rs": "use crate::b::B;\n",
            "b.rs": "use crate::{a, serve::handle};\n" + "//\n" * (MAX_LINES + 1),
            "serve/mod.rs": "mod handle;\nuse handle::H;\n",
            "serve/handle.rs": "use super::S;\n#[cfg(test)]\nmod tests {\n" + "//\n" * MAX_LINES + "}\n",
        }
        for name, text in files.items():
            with open(os.path.join(src, name), "w") as f:
                f.write(text)
        found = breaches_in(root, {"demo": {"sessiongate-core"}})
        want = [
            "demo: demo may not depend on sessiongate-proxy",
            "demo: import circle between a, b",
            f"demo/src/b.rs: {MAX_LINES + 2} lines outside tests (at most {MAX_LINES})",
        ]
        if sorted(found) != sorted(want):
            print(f"scripts/layout.py --self-test: found {found}, want {want}", file=sys.stderr)
            return 1
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    breaches = breaches_in(ROOT)
    for b in breaches:
        print(f"scripts/layout.py: {b}", file=sys.stderr)
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
