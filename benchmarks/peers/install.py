"""Installs each peer (Prefect, DBOS) into a virtual environment of its own.

The peers are not flowcore dependencies and never enter flowcore's ``.venv``:
each gets ``benchmarks/peers/.venvs/<name>``. A venv is reused while its stamp
file (``.peerbench-installed.json``) says it holds the requested version; the
stamp also records the version actually installed and how.

How a peer is installed, first that works:

1. ``pip install NAME==VERSION``, plainly;
2. if that fails to resolve (e.g. Prefect pins a ``certifi`` release newer than
   the registry serves), its own requirements, read from the wheel's metadata,
   with the pins of ``RELAXED`` packages dropped, then ``NAME==VERSION --no-deps``;
3. the newest release below the next major version that resolves
   (``pip install "NAME>=MAJOR,<MAJOR+1"``: pip walks back from the newest).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import venv
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
STAMP = ".peerbench-installed.json"
#: Packages whose version pins are dropped in step 2.
RELAXED = ("certifi",)
#: Lines of pip's output that are notes about this machine's absent local indexes.
NOISE = re.compile(r"is ignored: it is neither a file nor a directory")

Log = Callable[[str], None]


@dataclass
class Installed:
    name: str
    requested: str
    version: str
    method: str
    python: Path


class InstallError(RuntimeError):
    pass


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def read_stamp(name: str) -> Installed | None:
    stamp = VENVS / name / STAMP
    python = venv_python(name)
    if not stamp.exists() or not python.exists():
        return None
    try:
        data = json.loads(stamp.read_text())
        return Installed(name, data["requested"], data["version"], data["method"], python)
    except (OSError, ValueError, KeyError):
        return None


def _pip(python: Path, args: list[str], log: Log) -> subprocess.CompletedProcess[str]:
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", *args]
    shown = args if len(args) <= 12 else [*args[:3], f"<{len(args) - 3} requirements>"]
    log("  $ pip " + " ".join(shown))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if not NOISE.search(line)]
        log("    failed: " + " | ".join(lines[-6:]))
    return done


def _installed_version(python: Path, name: str) -> str | None:
    done = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _relaxed_requirements(python: Path, name: str, version: str, log: Log) -> list[str] | None:
    """The wheel's Requires-Dist lines (no extras), with the pins of RELAXED dropped."""
    with tempfile.TemporaryDirectory(prefix="peerbench-wheel-") as folder:
        done = _pip(
            python,
            [
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                folder,
                f"{name}=={version}",
            ],
            log,
        )
        if done.returncode != 0:
            return None
        wheels = list(Path(folder).glob("*.whl"))
        if not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as wheel:
            metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            text = wheel.read(metadata).decode()
    requirements = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.split(":", 1)[1].strip()
        if "extra ==" in requirement.replace("extra==", "extra =="):
            continue
        spec, _, marker = requirement.partition(";")
        package = re.split(r"[\s\[<>=!~(]", spec.strip(), maxsplit=1)[0]
        if package.lower() in RELAXED:
            requirement = package + (f"; {marker.strip()}" if marker else "")
            log(f"    relaxed: {spec.strip()} -> {package}")
        requirements.append(requirement)
    return requirements


def install(name: str, version: str, log: Log, method: str = "auto") -> Installed:
    """Make ``.venvs/<name>`` hold ``name`` (``version``, or the fallbacks above)."""
    existing = read_stamp(name)
    if (
        existing is not None
        and existing.requested == version
        and _installed_version(existing.python, name) == existing.version
    ):
        log(f"{name}: {existing.version} already installed ({existing.method})")
        return existing
    folder = VENVS / name
    python = venv_python(name)
    log(f"{name}: installing {name}=={version} into benchmarks/peers/.venvs/{name} ...")
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    (VENVS / ".gitignore").write_text("*\n")
    (folder / STAMP).unlink(missing_ok=True)
    _pip(python, ["install", "-q", "--upgrade", "pip"], log)

    how: str | None = None
    if (
        method == "auto"
        and _pip(python, ["install", "-q", f"{name}=={version}"], log).returncode == 0
    ):
        how = f"pip install {name}=={version}"
    if how is None and method in ("auto", "relaxed"):
        requirements = _relaxed_requirements(python, name, version, log)
        if (
            requirements is not None
            and _pip(python, ["install", "-q", *requirements], log).returncode == 0
            and _pip(python, ["install", "-q", "--no-deps", f"{name}=={version}"], log).returncode
            == 0
        ):
            how = (
                f"its requirements with the {', '.join(RELAXED)} pin relaxed, "
                f"then pip install --no-deps {name}=={version}"
            )
    if how is None:
        major = int(version.split(".")[0])
        spec = f"{name}>={major},<{major + 1}"
        if _pip(python, ["install", "-q", spec], log).returncode == 0:
            how = f'pip install "{spec}" (newest {name} {major} that resolves)'
    if how is None:
        raise InstallError(f"could not install {name} {version} (see the pip output above)")
    installed = _installed_version(python, name)
    if installed is None:
        raise InstallError(f"{name} installed, but its version cannot be read")
    check = subprocess.run(
        [str(python), "-c", f"import {name}"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise InstallError(
            f"{name} {installed} installed, but `import {name}` fails: "
            + (check.stderr.strip().splitlines() or ["?"])[-1]
        )
    data = {"requested": version, "version": installed, "method": how}
    (folder / STAMP).write_text(json.dumps(data, indent=2) + "\n")
    log(f"{name}: {installed} installed ({how})")
    return Installed(name, version, installed, how, python)


if __name__ == "__main__":  # python install.py NAME VERSION [auto|relaxed]
    result = install(sys.argv[1], sys.argv[2], print, *sys.argv[3:4])
    print(result)
