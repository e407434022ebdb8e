"""``make package`` (tools/package.py) builds a .difypkg that Dify's own loader accepts.

The key test unzips the package into an empty folder and lets the SDK register the plugin from
there, in a separate process started the way the daemon starts it (cwd = the plugin, which
therefore cannot see this repo): an endpoint file or a module ``main.py`` imports that the
package lacks fails it there. Other tests work on a copy of the plugin's runtime files in a
temporary folder, so they can break it at will.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.package import PackageError, build_package, collect_files, main

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_FILES = (
    ".difyignore",
    "manifest.yaml",
    "main.py",
    "requirements.txt",
    "pyproject.toml",
    "README.md",
    "README_zh.md",
    "PRIVACY.md",
)
RUNTIME_DIRS = ("_assets", "group", "endpoints")
REQUIRED_ROUTES = {
    ("GET", "/wechat", "endpoints.wechat_get", "WeChatGetEndpoint"),
    ("POST", "/wechat", "endpoints.wechat_post", "WeChatPostEndpoint"),
    ("POST", "/wechat/worker", "endpoints.wechat_worker", "WeChatWorkerEndpoint"),
}
DEV_ONLY = {"pyproject.toml", "Makefile", "requirements-dev.txt", ".gitignore", ".difyignore"}
DEV_DIRS = {"tests", "bench", "tools", ".venv", ".git", ".ci", "dist"}
CACHE_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
SDK_TIMEOUT = 60

# Runs in the unzipped package. main.py builds ``Plugin(DifyPluginEnv(...))``, whose first step
# is ``PluginRegistration(config)`` (manifest, groups, endpoint classes, _assets); the stand-in
# stops there instead of going on to talk to a daemon over stdio.
SDK_PROBE = """
import json, os, sys
import dify_plugin
from dify_plugin.core.plugin_registration import PluginRegistration

class RegistrationOnly:
    def __init__(self, config):
        self.registration = PluginRegistration(config)

dify_plugin.Plugin = RegistrationOnly
import main

routes = []
for rule in main.plugin.registration.endpoints.iter_rules():
    cls = rule.endpoint
    for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
        routes.append([method, rule.rule, cls.__module__, cls.__qualname__,
                       cls._invoke.__code__.co_filename])
ours = [m.__file__ for n, m in list(sys.modules.items())
        if (n == "main" or n.split(".")[0] == "endpoints") and getattr(m, "__file__", None)]
print("PROBE " + json.dumps({"routes": routes, "files": ours, "cwd": os.getcwd()}))
"""


def names(package: Path) -> list[str]:
    with zipfile.ZipFile(package) as archive:
        return archive.namelist()


def unzip(package: Path, destination: Path) -> Path:
    destination.mkdir()
    with zipfile.ZipFile(package) as archive:
        archive.extractall(destination)
    return destination


def run_sdk_probe(plugin_dir: Path) -> subprocess.CompletedProcess[str]:
    """The SDK loads the plugin from ``plugin_dir`` alone: no PYTHONPATH, no repo on the path."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(plugin_dir), "PYTHONHASHSEED": "0"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, "-c", SDK_PROBE],
        cwd=plugin_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=SDK_TIMEOUT,
        check=False,
    )


def probe_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, result.stdout[-2000:]
    report: dict[str, Any] = json.loads(lines[0].removeprefix("PROBE "))
    return report


def repo_routes() -> set[tuple[str, str, str]]:
    """(method, path, module) of every endpoint the repo's group YAML declares."""
    group = yaml.safe_load((ROOT / "group/wechat.yaml").read_text(encoding="utf-8"))
    routes = set()
    for path in group["endpoints"]:
        endpoint = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
        module = endpoint["extra"]["python"]["source"].removesuffix(".py").replace("/", ".")
        routes.add((endpoint["method"], endpoint["path"], module))
    return routes


@pytest.fixture(scope="module")
def repo_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_package(ROOT, tmp_path_factory.mktemp("dist"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the plugin's runtime files (and its ignore rules), without caches."""
    root = tmp_path / "plugin"
    root.mkdir()
    for name in RUNTIME_FILES:
        shutil.copy2(ROOT / name, root / name)
    for name in RUNTIME_DIRS:
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def add(root: Path, *paths: str, text: str = "x\n") -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")


def drop_ignore_line(root: Path, line: str) -> None:
    ignore = root / ".difyignore"
    lines = ignore.read_text(encoding="utf-8").splitlines()
    assert line in lines
    ignore.write_text("\n".join(kept for kept in lines if kept != line) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- the real repo


def test_repo_package_holds_the_runtime_and_nothing_else(repo_package: Path) -> None:
    assert repo_package.name.endswith(".difypkg")
    manifest = yaml.safe_load((ROOT / "manifest.yaml").read_text(encoding="utf-8"))
    assert repo_package.name == f"{manifest['name']}-{manifest['version']}.difypkg"
    packaged = names(repo_package)
    assert packaged == sorted(packaged)
    assert {
        "main.py",
        "manifest.yaml",
        "requirements.txt",
        "README.md",
        "README_zh.md",
        "PRIVACY.md",
        "_assets/icon.svg",
        "group/wechat.yaml",
        "endpoints/__init__.py",
        "endpoints/wechat/__init__.py",
        "endpoints/wechat_get.yaml",
        "endpoints/wechat_get.py",
        "endpoints/wechat_post.yaml",
        "endpoints/wechat_post.py",
        "endpoints/wechat_worker.yaml",
        "endpoints/wechat_worker.py",
    } <= set(packaged)
    for name in packaged:
        parts = name.split("/")
        assert parts[0] not in DEV_DIRS, name
        assert not CACHE_DIRS & set(parts), name
        assert not name.endswith(".pyc"), name
        assert not parts[-1].startswith(".env"), name
        assert name not in DEV_ONLY, name


def test_repo_package_keeps_every_runtime_module(repo_package: Path) -> None:
    on_disk = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "endpoints").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert on_disk <= set(names(repo_package))


def test_entries_are_deflated_files_with_a_fixed_time(repo_package: Path) -> None:
    with zipfile.ZipFile(repo_package) as archive:
        entries = archive.infolist()
        assert archive.testzip() is None
    assert entries
    for entry in entries:
        assert not entry.is_dir()
        assert entry.compress_type == zipfile.ZIP_DEFLATED
        assert entry.date_time == (1980, 1, 1, 0, 0, 0)


def test_sdk_registers_the_unzipped_package(repo_package: Path, tmp_path: Path) -> None:
    plugin_dir = unzip(repo_package, tmp_path / "installed").resolve()
    report = probe_report(run_sdk_probe(plugin_dir))
    routes = {tuple(route[:4]) for route in report["routes"]}
    assert routes >= REQUIRED_ROUTES
    assert {route[:3] for route in routes} == repo_routes()
    loaded_from = [Path(route[4]) for route in report["routes"]] + [
        Path(file) for file in report["files"]
    ]
    assert all(path.resolve().is_relative_to(plugin_dir) for path in loaded_from), loaded_from


def test_sdk_refuses_a_package_missing_an_endpoint_yaml(repo_package: Path, tmp_path: Path) -> None:
    """The probe does fail on a broken package, so its success above means something."""
    plugin_dir = unzip(repo_package, tmp_path / "installed")
    (plugin_dir / "endpoints/wechat_worker.yaml").unlink()
    result = run_sdk_probe(plugin_dir)
    assert result.returncode != 0
    assert "Error loading plugin configuration" in result.stderr
    assert "PROBE " not in result.stdout


# ---------------------------------------------------------------- ignore rules


def test_ignored_files_stay_out(tree: Path, tmp_path: Path) -> None:
    add(
        tree,
        "tests/x.py",
        "bench/b.py",
        "tools/t.py",
        "foo.pyc",
        "endpoints/__pycache__/wechat_get.cpython-312.pyc",
        "endpoints/wechat/cache.pyc",
        "secret/.env",
        "secret/notes.txt",
        ".env",
        ".env.local",
        ".venv/lib/site.py",
        ".git/HEAD",
        ".ci/run",
        "Makefile",
        "requirements-dev.txt",
        "dist/old.difypkg",
    )
    packaged = set(names(build_package(tree, tmp_path / "out")))
    assert "secret/notes.txt" in packaged
    assert packaged.isdisjoint(
        {
            "tests/x.py",
            "bench/b.py",
            "tools/t.py",
            "foo.pyc",
            "endpoints/__pycache__/wechat_get.cpython-312.pyc",
            "endpoints/wechat/cache.pyc",
            "secret/.env",
            ".env",
            ".env.local",
            ".venv/lib/site.py",
            ".git/HEAD",
            ".ci/run",
            "Makefile",
            "requirements-dev.txt",
            "dist/old.difypkg",
            "pyproject.toml",
            ".difyignore",
        }
    )


def test_gitignore_syntax_with_negation(tree: Path) -> None:
    (tree / ".difyignore").write_text(
        "# comment\n"
        "*.md\n"
        "!README.md\n"
        "!/PRIVACY.md\n"
        "docs/\n"
        "!docs/keep.txt\n"
        "/top.txt\n"
        "**/deep/*.log\n"
        "/pyproject.toml\n",
        encoding="utf-8",
    )
    add(tree, "docs/keep.txt", "top.txt", "sub/top.txt", "a/b/deep/x.log", "deep.log")
    add(tree, "endpoints/notes.md", "sub/README.md")
    files = set(collect_files(tree))
    assert {"README.md", "PRIVACY.md", "sub/README.md", "sub/top.txt", "deep.log"} <= files
    assert files.isdisjoint(
        {"README_zh.md", "endpoints/notes.md", "docs/keep.txt", "top.txt", "a/b/deep/x.log"}
    )


def test_gitignore_is_used_when_there_is_no_difyignore(tree: Path) -> None:
    (tree / ".difyignore").unlink()
    (tree / ".gitignore").write_text("notes/\npyproject.toml\n", encoding="utf-8")
    add(tree, "notes/a.txt", "tests/x.py")
    files = collect_files(tree)
    assert "notes/a.txt" not in files
    assert "tests/x.py" in files
    assert ".gitignore" in files


def test_git_directory_and_output_directory_are_always_left_out(tree: Path) -> None:
    (tree / ".difyignore").write_text("/pyproject.toml\n", encoding="utf-8")
    add(tree, ".git/HEAD")
    first = build_package(tree, tree / "out")
    second = names(build_package(tree, tree / "out"))
    assert first.exists()
    assert not [name for name in second if name.startswith(("out/", ".git/"))]


# ---------------------------------------------------------------- determinism and size


def test_two_builds_are_byte_identical(tree: Path, tmp_path: Path) -> None:
    first = build_package(tree, tmp_path / "a").read_bytes()
    for path in tree.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    second = build_package(tree, tmp_path / "b").read_bytes()
    assert first == second


def test_size_limit_is_on_uncompressed_bytes(tree: Path, tmp_path: Path) -> None:
    sizes = {name: (tree / name).stat().st_size for name in collect_files(tree)}
    total = sum(sizes.values())
    assert build_package(tree, tmp_path / "fits", max_size=total).exists()
    with pytest.raises(PackageError, match="over the limit") as raised:
        build_package(tree, tmp_path / "over", max_size=total - 1)
    largest = max(sizes, key=lambda name: sizes[name])
    assert f"1. {largest}: {sizes[largest]} bytes" in str(raised.value)
    assert not (tmp_path / "over").exists() or not list((tmp_path / "over").iterdir())


# ---------------------------------------------------------------- checks that fail the build


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("_assets/icon.svg", "icon file _assets/icon.svg (named in manifest.yaml) does not exist"),
        (
            "endpoints/wechat_worker.py",
            "source endpoints/wechat_worker.py (named in endpoints/wechat_worker.yaml) does not",
        ),
        (
            "endpoints/wechat_post.yaml",
            "wechat_post.yaml (named in group/wechat.yaml endpoints) does",
        ),
        ("group/wechat.yaml", "group/wechat.yaml (named in manifest.yaml plugins.endpoints) does"),
        ("main.py", "entrypoint main.py (named in manifest.yaml meta.runner) does"),
        ("PRIVACY.md", "PRIVACY.md does not exist"),
        ("README.md", "README.md does not exist"),
        ("requirements.txt", "neither requirements.txt nor pyproject.toml"),
    ],
)
def test_a_missing_runtime_file_fails_the_build(
    tree: Path, tmp_path: Path, missing: str, message: str
) -> None:
    (tree / missing).unlink()
    with pytest.raises(PackageError, match=re.escape(message)):
        build_package(tree, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_a_needed_file_excluded_by_the_rules_fails_the_build(tree: Path, tmp_path: Path) -> None:
    with (tree / ".difyignore").open("a", encoding="utf-8") as ignore:
        ignore.write("_assets/\nwechat_get.py\n")
    with pytest.raises(PackageError) as raised:
        build_package(tree, tmp_path / "dist")
    message = str(raised.value)
    rules = "is excluded by the ignore rules (.difyignore)"
    assert f"_assets/icon.svg (named in manifest.yaml) {rules}" in message
    assert f"endpoints/wechat_get.py (named in endpoints/wechat_get.yaml) {rules}" in message


def test_an_empty_privacy_policy_fails_the_build(tree: Path, tmp_path: Path) -> None:
    (tree / "PRIVACY.md").write_text("  \n", encoding="utf-8")
    with pytest.raises(PackageError, match=r"PRIVACY\.md is empty"):
        build_package(tree, tmp_path / "dist")


def test_a_packaged_pyproject_without_the_sdk_fails_the_build(tree: Path, tmp_path: Path) -> None:
    """The daemon installs from pyproject.toml when it is packaged, ignoring requirements.txt."""
    drop_ignore_line(tree, "/pyproject.toml")
    with pytest.raises(
        PackageError, match=r"pyproject\.toml is packaged, so the daemon installs from it"
    ):
        build_package(tree, tmp_path / "dist")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("name: wechat_official_account", "name: WeChat", "name is 'WeChat'"),
        ("version: 0.1.0", "version: v1", "version is 'v1'"),
        (
            "icon: icon.svg",
            "icon: missing.svg",
            "_assets/missing.svg (named in manifest.yaml) does",
        ),
        ("privacy: PRIVACY.md", "privacy: ../PRIVACY.md", "must stay inside"),
        ("    - group/wechat.yaml", "    - group/wechat.yaml\n    - group/x.yaml", "keeps only"),
        ("type: plugin", "type: [plugin", "manifest.yaml: not readable YAML"),
    ],
)
def test_a_broken_manifest_fails_the_build(
    tree: Path, tmp_path: Path, old: str, new: str, message: str
) -> None:
    manifest = tree / "manifest.yaml"
    text = manifest.read_text(encoding="utf-8")
    assert old in text
    manifest.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(PackageError, match=re.escape(message)):
        build_package(tree, tmp_path / "dist")


# ---------------------------------------------------------------- command line


def test_command_line_summary_and_failure(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dist"
    assert main(["--root", str(tree), "--output-dir", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "files" in summary
    assert "wechat_official_account-0.1.0.difypkg" in summary
    assert main(["--root", str(tree), "--output-dir", str(out), "--max-size", "100"]) == 1
    assert "over the limit of 100 bytes" in capsys.readouterr().err
