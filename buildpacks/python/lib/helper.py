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
            fail(f"{path} is a Poetry project, which this buildpack does not install: "
                 "commit a requirements.txt (poetry export -o requirements.txt)")
        fail(f"{path} has no [project] table naming the app's dependencies: "
             "add one, or commit a requirements.txt")
    if "dependencies" in project.get("dynamic", []):
        fail(f"{path} declares its dependencies dynamic (computed by the build backend): "
             "commit a requirements.txt instead")
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        fail(f"{path}: [project] dependencies must be a list of strings")
    print("\n".join(deps))


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
    else:
        fail("usage: helper.py pipfile-lock|pipfile-python|pyproject FILE | prune-wheels REPORT DIR")


if __name__ == "__main__":
    main(sys.argv[1:])
