"""Build the plugin's ``.difypkg`` in pure Python, without the Go ``dify`` CLI (``make package``).

    python -m tools.package [--output-dir dist] [--max-size BYTES] [--root DIR]

A ``.difypkg`` is a zip of the plugin directory. The rules follow what
``langgenius/dify-plugin-daemon`` does when it packs a directory and when it reads a package:

- ``pkg/plugin_packager/decoder/fs.go`` (``FSPluginDecoder.Walk``): ignore rules come from
  ``.difyignore``, or ``.gitignore`` when there is none; an excluded directory is not entered.
- ``pkg/plugin_packager/packager/packager.go`` (``Pack``, ``collectFiles``,
  ``writePackagedFile``): file entries only, ``/`` separators, sorted by path; the total
  uncompressed size is capped (50 MiB by default, ``cmd/commandline/plugin.go``) and the error
  names the largest files.
- ``pkg/plugin_packager/packager`` (``Packager.Validate`` → ``fetchManifest``) and
  ``pkg/entities/plugin_entities/plugin_declaration.go``: the manifest must parse and carry the
  required fields, with the daemon's formats for name, author and versions.
- ``pkg/plugin_packager/decoder/helper.go`` (``Manifest``, ``CheckAssetsValid``,
  ``AvailableI18nReadme``): every provider, group and endpoint YAML the manifest names must be
  readable; only the last endpoint group is kept; the icon must be in ``_assets/``;
  ``README.md`` must exist.
- ``pkg/plugin_packager/decoder/pathutil.go``: paths in YAML are relative and stay inside.
- ``pkg/plugin_packager/decoder/zip.go``: the daemon checks the same size limit on upload.
- ``internal/core/local_runtime/setup_python_environment.go``: the daemon installs dependencies
  from ``pyproject.toml`` when the package has one, else from ``requirements.txt``.

The build also fails where the installed plugin would: an endpoint's Python source, the
entrypoint, README or PRIVACY missing or empty, a needed file dropped by the ignore rules, or
a dependency file that does not name ``dify_plugin``. Differences from the official packager:
``!`` re-includes work as in git (its walker only ever excludes, so our ``.difyignore`` has
none), ``.git/`` and the output directory are always left out, and ``requirements.txt`` is not
generated from ``uv.lock``. Entries get a fixed time and mode, so a tree always gives the same
bytes.
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import re
import stat
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pathspec import GitIgnoreSpec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MAX_SIZE = 50 * 1024 * 1024
IGNORE_FILES = (".difyignore", ".gitignore")
ALWAYS_EXCLUDED = GitIgnoreSpec.from_lines([".git/"])
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_ATTRIBUTES = (stat.S_IFREG | 0o644) << 16
ZIP_UNIX = 3

_NAME = re.compile(r"[a-z0-9_-]{1,128}")
_AUTHOR = re.compile(r"[a-z0-9_-]{1,64}")
_VERSION = re.compile(r"\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?")
_DRIVE = re.compile(r"[A-Za-z]:")
_ARCHES = frozenset({"amd64", "arm64"})
_METHODS = frozenset({"HEAD", "GET", "POST", "PUT", "DELETE", "OPTIONS"})
_PROVIDER_KINDS = ("tools", "models", "endpoints", "agent_strategies", "datasources", "triggers")
_SDK_REQUIREMENT = "dify-plugin"


class PackageError(Exception):
    """The tree would not make a package Dify installs and runs; the message says why."""


# ---------------------------------------------------------------- which files go in


def load_ignore_rules(root: Path) -> tuple[str | None, GitIgnoreSpec]:
    """The rules of the first of ``.difyignore`` / ``.gitignore`` that exists, and its name."""
    for name in IGNORE_FILES:
        path = root / name
        if path.is_file():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            return name, GitIgnoreSpec.from_lines(lines)
    return None, GitIgnoreSpec.from_lines([])


def collect_files(root: Path, *, skip: Iterable[Path] = ()) -> list[str]:
    """Package paths (relative, ``/``-separated, sorted) of every file the ignore rules keep.

    Excluded directories are pruned, so a ``!`` pattern cannot bring back a file inside one
    (git's rule too). ``skip`` lists directories always left out, such as the output directory.
    """
    root = root.resolve()
    _, rules = load_ignore_rules(root)
    skipped = {path.resolve() for path in skip}
    files: list[str] = []
    for current, dirnames, filenames in os.walk(root):
        here = Path(current)
        prefix = _package_prefix(here, root)
        dirnames[:] = _kept_directories(here, prefix, dirnames, rules, skipped)
        files.extend(prefix + name for name in filenames if not _excluded(rules, prefix + name))
    return sorted(files)


def _package_prefix(directory: Path, root: Path) -> str:
    relative = directory.relative_to(root).as_posix()
    return "" if relative == "." else f"{relative}/"


def _excluded(rules: GitIgnoreSpec, package_path: str) -> bool:
    return ALWAYS_EXCLUDED.match_file(package_path) or rules.match_file(package_path)


def _kept_directories(
    here: Path, prefix: str, names: Iterable[str], rules: GitIgnoreSpec, skipped: set[Path]
) -> list[str]:
    """The subdirectories to walk into. A kept symlinked directory is refused, not dropped:
    the walk does not follow it, so its files would silently be missing from the package."""
    kept = []
    for name in names:
        if (here / name).resolve() in skipped or _excluded(rules, f"{prefix}{name}/"):
            continue
        if (here / name).is_symlink():
            raise PackageError(
                f"{prefix}{name} is a symlink to a directory; packages hold real files only "
                "(copy it, or exclude it in .difyignore)"
            )
        kept.append(name)
    return kept


def _read_files(root: Path, files: Sequence[str]) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    for name in files:
        try:
            contents[name] = (root / name).read_bytes()
        except OSError as error:
            raise PackageError(f"cannot read {name}: {error}") from error
    return contents


# ---------------------------------------------------------------- what must be in it


def check_plugin(root: Path, files: Sequence[str]) -> dict[str, Any]:
    """The parsed manifest, once everything the daemon and the SDK need is in ``files``.

    Every problem is reported at once: fixing them one build at a time is slow.
    """
    packaged = frozenset(files)
    manifest = _load_manifest(root, packaged)
    problems = [
        *_field_problems(manifest),
        *_asset_problems(manifest, root, packaged),
        *_document_problems(manifest, root, packaged),
        *_entrypoint_problems(manifest, root, packaged),
        *_dependency_problems(root, packaged),
        *_provider_problems(manifest, root, packaged),
    ]
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise PackageError(f"the plugin cannot be packaged:\n{listed}")
    return manifest


def _load_manifest(root: Path, packaged: frozenset[str]) -> dict[str, Any]:
    missing = _absent(root, packaged, "manifest.yaml", "the manifest")
    if missing:
        raise PackageError(missing)
    try:
        manifest = _read_yaml(root, "manifest.yaml")
    except ValueError as error:
        raise PackageError(str(error)) from error
    if not isinstance(manifest, dict):
        raise PackageError("manifest.yaml: expected a mapping of fields")
    return manifest


def _read_yaml(root: Path, package_path: str) -> Any:
    try:
        return yaml.safe_load((root / package_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{package_path}: not readable YAML ({error})") from error


def _absent(
    root: Path, packaged: frozenset[str], package_path: str, what: str, named_in: str = ""
) -> str | None:
    """Why ``package_path`` would be missing from the package, or None when it is in."""
    if package_path in packaged:
        return None
    subject = f"{what} {package_path}" + (f" (named in {named_in})" if named_in else "")
    if (root / package_path).is_file():
        return f"{subject} is excluded by the ignore rules ({_rules_name(root)})"
    return f"{subject} does not exist"


def _rules_name(root: Path) -> str:
    name, _ = load_ignore_rules(root)
    return name or "no ignore file"


def _field(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for key in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _arches(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(arch in _ARCHES for arch in value)


def _timestamp(value: Any) -> bool:
    if isinstance(value, datetime):
        return True
    try:
        datetime.fromisoformat(str(value))
    except ValueError:
        return False
    return True


_FIELD_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("version", _matches(_VERSION), "a version like 1.2.3"),
    ("type", lambda value: value == "plugin", '"plugin"'),
    ("author", _matches(_AUTHOR), "1-64 of a-z 0-9 _ -"),
    ("name", _matches(_NAME), "1-128 of a-z 0-9 _ -"),
    ("label.en_US", _text, "a non-empty text"),
    ("description.en_US", _text, "a non-empty text"),
    ("icon", _text, "a file name in _assets/"),
    ("resource.memory", _positive_int, "a number of bytes"),
    ("meta.version", _matches(_VERSION), "a version like 0.0.1"),
    ("meta.arch", _arches, "a list of amd64 / arm64"),
    ("meta.runner.language", lambda value: value == "python", '"python"'),
    ("meta.runner.version", _text, 'a Python version such as "3.12"'),
    ("meta.runner.entrypoint", _text, "a module name such as main"),
    ("created_at", _timestamp, "an RFC 3339 time"),
)


def _field_problems(manifest: Mapping[str, Any]) -> list[str]:
    problems = []
    for dotted, valid, expected in _FIELD_RULES:
        value = _field(manifest, dotted)
        if value is None:
            problems.append(f"manifest.yaml: {dotted} is missing (expected {expected})")
        elif not valid(value):
            problems.append(f"manifest.yaml: {dotted} is {value!r}; expected {expected}")
    problems.extend(_storage_problems(manifest))
    return problems


def _storage_problems(manifest: Mapping[str, Any]) -> list[str]:
    storage = _field(manifest, "resource.permission.storage")
    if not isinstance(storage, Mapping) or not storage.get("enabled"):
        return []
    size = storage.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and 1024 <= size <= 1024**3:
        return []
    return [
        f"manifest.yaml: resource.permission.storage.size is {size!r}; "
        "expected 1024 to 1073741824 bytes"
    ]


def _logical_path(value: Any, where: str) -> str:
    """A YAML-given path as a package path; the daemon refuses absolute or escaping ones."""
    if not _text(value):
        raise ValueError(f"{where}: expected a relative file path, got {value!r}")
    path = posixpath.normpath(str(value).strip().replace("\\", "/"))
    if path.startswith("/") or path == ".." or path.startswith("../") or _DRIVE.match(path):
        raise ValueError(f"{where}: {value!r} must stay inside the plugin directory")
    return path


def _asset_problems(manifest: Mapping[str, Any], root: Path, packaged: frozenset[str]) -> list[str]:
    """The daemon looks icons up among the files under ``_assets/`` (CheckAssetsValid)."""
    problems = []
    for field in ("icon", "icon_dark"):
        icon = manifest.get(field)
        if not _text(icon):
            continue
        path = posixpath.normpath(f"_assets/{icon}")
        missing = (
            f"manifest.yaml: {field} {icon!r} must name a file inside _assets/"
            if not path.startswith("_assets/")
            else _absent(root, packaged, path, f"the {field} file", "manifest.yaml")
        )
        if missing:
            problems.append(missing)
    return problems


def _document_problems(
    manifest: Mapping[str, Any], root: Path, packaged: frozenset[str]
) -> list[str]:
    problems = _empty_document(root, packaged, "README.md")
    privacy = manifest.get("privacy")
    if not _text(privacy):
        return [*problems, "manifest.yaml: privacy is missing (expected e.g. PRIVACY.md)"]
    try:
        path = _logical_path(privacy, "manifest.yaml: privacy")
    except ValueError as error:
        return [*problems, str(error)]
    return [*problems, *_empty_document(root, packaged, path)]


def _empty_document(root: Path, packaged: frozenset[str], package_path: str) -> list[str]:
    missing = _absent(root, packaged, package_path, "the document")
    if missing:
        return [missing]
    if not (root / package_path).read_text(encoding="utf-8", errors="replace").strip():
        return [f"{package_path} is empty"]
    return []


def _entrypoint_problems(
    manifest: Mapping[str, Any], root: Path, packaged: frozenset[str]
) -> list[str]:
    entrypoint = _field(manifest, "meta.runner.entrypoint")
    if not _text(entrypoint):
        return []
    source = str(entrypoint).strip().replace(".", "/") + ".py"
    missing = _absent(root, packaged, source, "the entrypoint", "manifest.yaml meta.runner")
    return [missing] if missing else []


def _dependency_problems(root: Path, packaged: frozenset[str]) -> list[str]:
    """The daemon installs from pyproject.toml when packaged, else requirements.txt."""
    try:
        if "pyproject.toml" in packaged:
            source, names = "pyproject.toml", _pyproject_requirements(root)
        elif "requirements.txt" in packaged:
            source, names = "requirements.txt", _requirements_txt(root)
        else:
            return [
                "neither requirements.txt nor pyproject.toml is packaged; "
                "the daemon installs the plugin's dependencies from one of them"
            ]
    except ValueError as error:
        return [str(error)]
    if _SDK_REQUIREMENT in names:
        return []
    if source == "pyproject.toml":
        return [
            "pyproject.toml is packaged, so the daemon installs from it instead of "
            "requirements.txt, but it does not require dify_plugin and the plugin would not "
            "start: leave it out in .difyignore, or declare the dependencies in it"
        ]
    return ["requirements.txt does not require dify_plugin, so the plugin would not start"]


def _pyproject_requirements(root: Path) -> set[str]:
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"pyproject.toml: not readable TOML ({error})") from error
    dependencies = _field(data, "project.dependencies") or []
    if not isinstance(dependencies, list):
        raise ValueError("pyproject.toml: project.dependencies must be a list")
    return {_requirement_name(str(line)) for line in dependencies}


def _requirements_txt(root: Path) -> set[str]:
    try:
        text = (root / "requirements.txt").read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"requirements.txt: not readable ({error})") from error
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return {_requirement_name(line) for line in lines if line and not line.startswith("-")}


def _requirement_name(requirement: str) -> str:
    """The PEP 503 normalised project name of a requirement line."""
    name = re.split(r"[\s<>=!~;\[@(,]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _provider_problems(
    manifest: Mapping[str, Any], root: Path, packaged: frozenset[str]
) -> list[str]:
    plugins = manifest.get("plugins")
    if not isinstance(plugins, Mapping):
        return ["manifest.yaml: plugins is missing (expected e.g. endpoints: [group/x.yaml])"]
    declared = {kind: plugins.get(kind) or [] for kind in _PROVIDER_KINDS}
    problems = [
        f"manifest.yaml: plugins.{kind} must be a list of YAML paths"
        for kind, paths in declared.items()
        if not isinstance(paths, list)
    ]
    if problems:
        return problems
    if not any(declared.values()):
        return ["manifest.yaml: plugins lists no provider (endpoints, tools, models, ...)"]
    problems.extend(_group_count_problem(declared["endpoints"]))
    for kind, paths in declared.items():
        check = _endpoint_group_problems if kind == "endpoints" else _provider_file_problems
        for raw in paths:
            problems.extend(check(raw, f"manifest.yaml plugins.{kind}", root, packaged))
    return problems


def _group_count_problem(groups: list[Any]) -> list[str]:
    if len(groups) <= 1:
        return []
    return [
        f"manifest.yaml: plugins.endpoints lists {len(groups)} groups; the daemon keeps only "
        "the last one (decoder/helper.go), so put every endpoint in one group"
    ]


def _provider_file_problems(
    raw: Any, where: str, root: Path, packaged: frozenset[str]
) -> list[str]:
    try:
        path = _logical_path(raw, where)
    except ValueError as error:
        return [str(error)]
    missing = _absent(root, packaged, path, "the provider file", where)
    return [missing] if missing else []


def _endpoint_group_problems(
    raw: Any, where: str, root: Path, packaged: frozenset[str]
) -> list[str]:
    try:
        path = _logical_path(raw, where)
        missing = _absent(root, packaged, path, "the endpoint group", where)
        if missing:
            return [missing]
        group = _read_yaml(root, path)
    except ValueError as error:
        return [str(error)]
    if not isinstance(group, Mapping):
        return [f"{path}: expected a mapping with settings and endpoints"]
    problems = []
    if not isinstance(group.get("settings", []), list):
        problems.append(f"{path}: settings must be a list (the SDK rejects a mapping)")
    endpoints = group.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        return [*problems, f"{path}: endpoints must list the endpoint YAML files"]
    for entry in endpoints:
        problems.extend(_endpoint_problems(entry, f"{path} endpoints", root, packaged))
    return problems


def _endpoint_problems(raw: Any, where: str, root: Path, packaged: frozenset[str]) -> list[str]:
    try:
        path = _logical_path(raw, where)
        missing = _absent(root, packaged, path, "the endpoint file", where)
        if missing:
            return [missing]
        endpoint = _read_yaml(root, path)
        if not isinstance(endpoint, Mapping):
            return [f"{path}: expected a mapping with path, method and extra.python.source"]
        source = _logical_path(
            _field(endpoint, "extra.python.source"), f"{path} extra.python.source"
        )
    except ValueError as error:
        return [str(error)]
    problems = _route_problems(endpoint, path)
    if not source.endswith(".py"):
        problems.append(f"{path}: extra.python.source {source!r} is not a .py file")
    missing = _absent(root, packaged, source, "the endpoint source", path)
    return [*problems, missing] if missing else problems


def _route_problems(endpoint: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    route = endpoint.get("path")
    if not isinstance(route, str) or not route.startswith("/"):
        problems.append(f"{path}: path is {route!r}; expected a URL path starting with /")
    method = endpoint.get("method")
    if method not in _METHODS:
        problems.append(f"{path}: method is {method!r}; expected one of {sorted(_METHODS)}")
    return problems


# ---------------------------------------------------------------- the archive


def _check_size(contents: Mapping[str, bytes], max_size: int) -> None:
    total = sum(len(data) for data in contents.values())
    if total <= max_size:
        return
    largest = sorted(contents.items(), key=lambda item: (-len(item[1]), item[0]))[:5]
    listed = "\n".join(
        f"  {rank}. {name}: {len(data)} bytes" for rank, (name, data) in enumerate(largest, 1)
    )
    raise PackageError(
        f"the package would be {total} bytes uncompressed, over the limit of {max_size} "
        f"bytes; the largest files:\n{listed}\n"
        "Leave out what the runtime does not need in .difyignore."
    )


def _zip_bytes(contents: Mapping[str, bytes]) -> bytes:
    """Sorted file entries with a fixed time and mode: equal trees give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(contents):
            entry = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            entry.create_system = ZIP_UNIX
            entry.external_attr = ZIP_FILE_ATTRIBUTES
            archive.writestr(
                entry, contents[name], compress_type=zipfile.ZIP_DEFLATED, compresslevel=9
            )
    return buffer.getvalue()


def _write_replacing(target: Path, data: bytes) -> None:
    """Write beside the target, then rename: a failed build never leaves half a package."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)


def build_package(
    root: Path = ROOT, output_dir: Path | None = None, max_size: int = DEFAULT_MAX_SIZE
) -> Path:
    """Check the plugin in ``root`` and write ``<output_dir>/<name>-<version>.difypkg``."""
    root = root.resolve()
    output_dir = (output_dir if output_dir is not None else root / "dist").resolve()
    if not (root / "manifest.yaml").is_file():
        raise PackageError(f"{root} holds no manifest.yaml; is it the plugin directory?")
    files = collect_files(root, skip=[output_dir])
    manifest = check_plugin(root, files)
    contents = _read_files(root, files)
    _check_size(contents, max_size)
    target = output_dir / f"{manifest['name']}-{manifest['version']}.difypkg"
    _write_replacing(target, _zip_bytes(contents))
    return target


# ---------------------------------------------------------------- command line


def _byte_count(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of bytes")
    return value


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.package",
        description="Build <name>-<version>.difypkg from the plugin directory.",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="plugin directory (the repo)")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="where to write it (default: ROOT/dist)"
    )
    parser.add_argument(
        "--max-size",
        type=_byte_count,
        default=DEFAULT_MAX_SIZE,
        help=f"uncompressed size limit in bytes (default {DEFAULT_MAX_SIZE}, Dify's)",
    )
    return parser.parse_args(argv)


def _summary(target: Path) -> str:
    with zipfile.ZipFile(target) as archive:
        entries = archive.infolist()
    size = sum(entry.file_size for entry in entries)
    try:
        shown = target.relative_to(Path.cwd())
    except ValueError:
        shown = target
    return (
        f"Packaged {len(entries)} files, {size:,} bytes uncompressed, "
        f"{target.stat().st_size:,} bytes compressed: {shown}"
    )


def _negation_note(root: Path) -> str | None:
    name, _ = load_ignore_rules(root)
    if name is None:
        return None
    lines = (root / name).read_text(encoding="utf-8").splitlines()
    if not any(line.strip().startswith("!") for line in lines):
        return None
    return (
        f"note: {name} has '!' re-include patterns; the official `dify plugin package` "
        "ignores them, so its package would leave those files out"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        target = build_package(args.root, args.output_dir, args.max_size)
    except PackageError as error:
        print(f"package: error: {error}", file=sys.stderr)
        return 1
    note = _negation_note(args.root.resolve())
    if note:
        print(note, file=sys.stderr)
    print(_summary(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
