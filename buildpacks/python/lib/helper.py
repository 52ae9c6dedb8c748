"""Helpers of the Python buildpack's bin/compile, run with Debian's python3.

python3 helper.py pipfile-lock Pipfile.lock [--sources]
    prints a requirements file of the lock's default packages (exact
    versions, with their hashes when every package has some); with
    --sources, the lock's package indexes come first as --index-url and
    --extra-index-url lines.
python3 helper.py pipfile-python Pipfile.lock
    prints the Python version the lock asks for, if any.
python3 helper.py pyproject pyproject.toml
    prints the [project] table's dependencies, one a line.
python3 helper.py uv-lock uv.lock [--sources]
    prints a requirements file of what uv.lock pins for the project's
    dependencies (not its dependency groups or extras nobody asks for),
    for this Python: exact versions with their hashes (when every package
    has some); with --sources, the lock's package indexes come first.
python3 helper.py poetry-lock poetry.lock pyproject.toml [--sources]
    likewise for poetry.lock: the main group's packages.
    Either fails when pyproject.toml names a dependency the lock does not
    (the lock is out of date).
python3 helper.py prune-wheels REPORT DIR
    removes the wheels in DIR that pip's installation report REPORT does
    not name (by file name: from the cache or an index), so the wheel
    cache holds what the app uses; a wheel built from a local project
    (-e .) goes too.

Errors go to stderr as one line, with exit status 1.
"""

import json
import os
import sys
import tomllib
from urllib.parse import unquote, urlparse


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def load_lock(path):
    try:
        with open(path) as f:
            lock = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path} is not valid JSON: {e}")
    if not isinstance(lock, dict):
        fail(f"{path} is not a Pipfile.lock (no JSON object)")
    return lock


def pipfile_lock(path, sources):
    lock = load_lock(path)
    lines = []
    if sources:
        for i, src in enumerate(lock.get("_meta", {}).get("sources", [])):
            url = src.get("url")
            if not url:
                continue
            lines.append(("--index-url " if i == 0 else "--extra-index-url ") + url)
            if src.get("verify_ssl") is False:
                lines.append("--trusted-host " + (urlparse(url).hostname or url))
    pkgs = lock.get("default", {})
    # pip checks hashes for all requirements or none: keep them only when
    # every package has some (VCS and path packages have none).
    hashed = all(isinstance(s, dict) and s.get("hashes") and "editable" not in s for s in pkgs.values())
    for name, spec in sorted(pkgs.items()):
        if isinstance(spec, str):
            lines.append(name if spec in ("", "*") else name + spec)
            continue
        extras = "[" + ",".join(spec["extras"]) + "]" if spec.get("extras") else ""
        markers = spec.get("markers")
        if "git" in spec:
            url = spec["git"]
            if not url.startswith("git+"):
                url = "git+" + url
            if spec.get("ref"):
                url += "@" + spec["ref"]
            if spec.get("subdirectory"):
                url += "#subdirectory=" + spec["subdirectory"]
            line = f"{name}{extras} @ {url}"
        elif "path" in spec or "file" in spec:
            line = (spec.get("path") or spec.get("file")) + extras
            if spec.get("editable"):
                line, markers = "-e " + line, None
        else:
            line = name + extras + spec.get("version", "")
        if markers:
            line += " ; " + markers
        if hashed:
            line += "".join(" --hash=" + h for h in spec["hashes"])
        lines.append(line)
    print("\n".join(lines))


def pipfile_python(path):
    req = load_lock(path).get("_meta", {}).get("requires", {})
    v = req.get("python_full_version") or req.get("python_version")
    if v:
        print(v)


def pyproject(path):
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"{path} is not valid TOML: {e}")
    project = data.get("project")
    if project is None:
        if "poetry" in data.get("tool", {}):
            fail(f"{path} is a Poetry project without its poetry.lock: commit it (poetry lock)")
        fail(f"{path} has no [project] table naming the app's dependencies: "
             "add one, or commit a requirements.txt")
    if "dependencies" in project.get("dynamic", []):
        fail(f"{path} declares its dependencies dynamic (computed by the build backend): "
             "commit a requirements.txt instead")
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        fail(f"{path}: [project] dependencies must be a list of strings")
    print("\n".join(deps))


def load_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"{path} is not valid TOML: {e}")


def marker_ok(marker, extras=()):
    """Whether an environment marker holds for this Python (with the
    extras asked for), as pip decides it."""
    if not marker:
        return True
    from pip._vendor.packaging.markers import InvalidMarker, Marker
    try:
        m = Marker(marker)
    except InvalidMarker as e:
        fail(f"bad environment marker {marker!r}: {e}")
    return any(m.evaluate({"extra": e}) for e in (tuple(extras) or ("",)))


class Pins:
    """Requirement lines of locked packages, hashed when all have hashes."""

    def __init__(self):
        self.lines, self.hashed, self.indexes = [], True, []

    def add(self, name, version, source, hashes):
        kind = source.get("kind")
        if kind == "registry":
            line = f"{name}=={version}"
            url = source.get("url")
            if url and url not in self.indexes:
                self.indexes.append(url)
        elif kind == "git":
            line = f"{name} @ git+{source['url']}" + (f"@{source['rev']}" if source.get("rev") else "")
            if source.get("subdirectory"):
                line += "#subdirectory=" + source["subdirectory"]
        elif kind == "url":
            line = f"{name} @ {source['url']}"
        elif kind == "path":
            line = source["path"]
            if not line.startswith((".", "/")):
                line = "./" + line
        else:
            fail(f"{name}: a source of kind {kind!r} is not supported")
        if not hashes or kind in ("git", "path"):
            self.hashed = False
        self.lines.append((line, sorted(set(hashes))))

    def print(self, sources):
        out = []
        if sources:
            for i, url in enumerate(self.indexes):
                out.append(("--index-url " if i == 0 else "--extra-index-url ") + url)
        for line, hashes in sorted(self.lines):
            if self.hashed:
                line += "".join(" --hash=" + h for h in hashes)
            out.append(line)
        print("\n".join(out))


def uv_source(src):
    if "registry" in src:
        return {"kind": "registry", "url": src["registry"]}
    if "git" in src:
        # git = "https://host/repo?rev=main#COMMIT": the commit is pinned.
        u = urlparse(src["git"])
        return {"kind": "git", "url": u._replace(query="", fragment="").geturl(),
                "rev": u.fragment or None, "subdirectory": dict(
                    p.split("=", 1) for p in u.query.split("&") if "=" in p).get("subdirectory")}
    if "url" in src:
        return {"kind": "url", "url": src["url"]}
    for k in ("path", "directory", "editable", "virtual"):
        if k in src:
            return {"kind": "path", "path": src[k]}
    return {"kind": None}


def uv_lock(path, sources):
    lock = load_toml(path)
    pkgs = lock.get("package", [])
    if not isinstance(pkgs, list):
        fail(f"{path}: no [[package]] entries")
    roots = [p for p in pkgs if "." in (p.get("source", {}).get("virtual"), p.get("source", {}).get("editable"))]
    if len(roots) != 1:
        fail(f"{path}: cannot tell the project's own entry (source virtual or editable \".\")")
    # A dependency pyproject.toml names that the lock does not (added
    # without uv lock) would be missing at run time: say so, as
    # uv sync --locked does.
    locked = {canon(r.get("name", "")) for r in roots[0].get("metadata", {}).get("requires-dist", [])}
    pyproject_path = os.path.join(os.path.dirname(path), "pyproject.toml")
    if os.path.exists(pyproject_path):
        missing = sorted(set(project_deps(load_toml(pyproject_path), pyproject_path)) - locked)
        if missing:
            fail(f"{path} is out of date: pyproject.toml names {', '.join(missing)}, which it does not lock: run uv lock")
    by_name = {}
    for p in pkgs:
        by_name.setdefault(p.get("name"), []).append(p)

    def find(dep):
        cands = by_name.get(dep.get("name"), [])
        if "version" in dep:
            cands = [c for c in cands if c.get("version") == dep["version"]]
        if "source" in dep:
            cands = [c for c in cands if c.get("source") == dep["source"]]
        if len(cands) != 1:
            fail(f"{path}: {dep.get('name')} is locked {len(cands)} times for one dependency")
        return cands[0]

    # The project's dependencies and theirs (with the extras asked for),
    # for this Python; its dependency groups (dev) are left out.
    pins, pinned, walked = Pins(), set(), set()
    todo = [(roots[0], frozenset())]
    while todo:
        pkg, extras = todo.pop()
        deps = list(pkg.get("dependencies", []))
        for e in extras:
            deps += pkg.get("optional-dependencies", {}).get(e, [])
        for dep in deps:
            if not marker_ok(dep.get("marker")):
                continue
            p = find(dep)
            key = (p["name"], p.get("version"), json.dumps(p.get("source"), sort_keys=True))
            if key not in pinned:
                pinned.add(key)
                files = ([p["sdist"]] if "sdist" in p else []) + p.get("wheels", [])
                pins.add(p["name"], p.get("version"), uv_source(p.get("source", {})),
                         [f["hash"] for f in files if f.get("hash")])
            ex = frozenset(dep.get("extra", []))
            if (key, ex) not in walked:
                walked.add((key, ex))
                todo.append((p, ex))
    pins.print(sources)


def poetry_lock(path, pyproject_path, sources):
    lock = load_toml(path)
    project = load_toml(pyproject_path) if os.path.exists(pyproject_path) else {}
    pkgs = lock.get("package", [])
    by_name = {canon(p.get("name", "")): p for p in pkgs}
    # The main group: the packages poetry 2 marks so, else those reached
    # from pyproject's main dependencies.
    wanted = {}  # name -> extras
    missing = sorted(set(project_deps(project, pyproject_path)) - set(by_name))
    if missing:
        fail(f"{path} is out of date: pyproject.toml names {', '.join(missing)}, which it does not lock: run poetry lock")
    if pkgs and all("groups" in p for p in pkgs):
        for p in pkgs:
            m = p.get("markers")
            if isinstance(m, dict):
                m = m.get("main")
            if "main" in p["groups"] and marker_ok(m):
                wanted[canon(p["name"])] = set()
    else:
        todo = list(project_deps(project, pyproject_path).items())
        while todo:
            name, extras = todo.pop()
            if name in wanted and extras <= wanted[name]:
                continue
            wanted[name] = wanted.get(name, set()) | extras
            p = by_name.get(name)
            if p is None:
                fail(f"{path} does not lock {name}, which the app needs: run poetry lock")
            deps = dict(p.get("dependencies", {}))
            extra_names = set()
            for e in extras:
                extra_names |= {canon(x.split()[0].split("[")[0]) for x in p.get("extras", {}).get(e, [])}
            for dn, spec in deps.items():
                specs = spec if isinstance(spec, list) else [spec]
                for sp in specs:
                    sp = sp if isinstance(sp, dict) else {}
                    if sp.get("optional") and canon(dn) not in extra_names:
                        continue
                    if marker_ok(sp.get("markers"), extras):
                        todo.append((canon(dn), set(sp.get("extras", []))))
    pins = Pins()
    for name in sorted(wanted):
        p = by_name.get(name)
        if p is None:
            fail(f"{path} does not lock {name}, which the app needs: run poetry lock")
        src = p.get("source", {})
        t = src.get("type")
        if not t:
            s = {"kind": "registry", "url": None}
        elif t == "legacy":
            s = {"kind": "registry", "url": src.get("url")}
        elif t == "git":
            s = {"kind": "git", "url": src["url"], "rev": src.get("resolved_reference") or src.get("reference"),
                 "subdirectory": src.get("subdirectory")}
        elif t == "url":
            s = {"kind": "url", "url": src["url"]}
        elif t in ("directory", "file"):
            s = {"kind": "path", "path": src["url"]}
        else:
            fail(f"{path}: {name} comes from a source of type {t!r}, which is not supported")
        pins.add(p["name"], p.get("version"), s, [f["hash"] for f in p.get("files", []) if f.get("hash")])
    pins.print(sources)


def project_deps(data, path):
    """The main dependencies pyproject.toml names, by canonical name, with
    their extras: [project] dependencies and Poetry's own table (but
    python and optional ones)."""
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    deps = {}
    for d in data.get("project", {}).get("dependencies", []):
        try:
            r = Requirement(d)
        except InvalidRequirement as e:
            fail(f"{path}: {d!r}: {e}")
        if marker_ok(str(r.marker) if r.marker else None):
            deps[canon(r.name)] = set(r.extras)
    for name, spec in data.get("tool", {}).get("poetry", {}).get("dependencies", {}).items():
        spec = spec if isinstance(spec, dict) else {}
        if canon(name) == "python" or spec.get("optional") or not marker_ok(spec.get("markers")):
            continue
        deps[canon(name)] = set(spec.get("extras", []))
    return deps


def canon(name):
    return name.lower().replace("_", "-").replace(".", "-")


def prune_wheels(report, wheels):
    with open(report) as f:
        used = {
            os.path.basename(unquote(urlparse(item.get("download_info", {}).get("url", "")).path))
            for item in json.load(f).get("install", [])
        }
    for name in os.listdir(wheels):
        if name.endswith(".whl") and name not in used:
            os.remove(os.path.join(wheels, name))


def main(args):
    if len(args) >= 2 and args[0] == "pipfile-lock":
        pipfile_lock(args[1], "--sources" in args[2:])
    elif len(args) == 2 and args[0] == "pipfile-python":
        pipfile_python(args[1])
    elif len(args) == 2 and args[0] == "pyproject":
        pyproject(args[1])
    elif len(args) == 3 and args[0] == "prune-wheels":
        prune_wheels(args[1], args[2])
    elif len(args) >= 2 and args[0] == "uv-lock":
        uv_lock(args[1], "--sources" in args[2:])
    elif len(args) >= 3 and args[0] == "poetry-lock":
        poetry_lock(args[1], args[2], "--sources" in args[3:])
    else:
        fail("usage: helper.py pipfile-lock|pipfile-python|pyproject FILE | uv-lock FILE | "
             "poetry-lock FILE PYPROJECT | prune-wheels REPORT DIR")


if __name__ == "__main__":
    main(sys.argv[1:])
