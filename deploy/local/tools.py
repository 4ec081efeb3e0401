"""Java and Maven: find them, and fetch server artifacts from Maven Central into the cache."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import zipfile
from functools import lru_cache
from pathlib import Path

from deploy.local.errors import DownloadError, MissingToolError
from deploy.local.process import file_lock

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MIN_JAVA = 17
MAVEN_TIMEOUT_SECONDS = 1800.0


@lru_cache(maxsize=1)
def java() -> Path:
    """The java executable on PATH (resolved), checked to be Java 17 or newer."""
    found = shutil.which("java")
    if found is None:
        raise MissingToolError(
            "java not found on PATH: install a Java 17 JDK (apt-get install openjdk-17-jdk)"
        )
    path = Path(found).resolve()
    output = subprocess.run(
        [str(path), "-version"], capture_output=True, text=True, timeout=60
    ).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise MissingToolError(
            f"{path} is Java {major or '?'}; the local stack needs Java {MIN_JAVA}: "
            "install openjdk-17-jdk-headless and put it first on PATH"
        )
    return path


def java_home() -> Path:
    """The JDK home that holds `java()` (ES reads it from ES_JAVA_HOME)."""
    return java().parent.parent


def mvn() -> str:
    """The mvn executable on PATH."""
    found = shutil.which("mvn")
    if found is None:
        raise MissingToolError(
            "mvn not found on PATH: install Maven 3.8+ (apt-get install maven); "
            "it downloads the server jars from Maven Central on the first start"
        )
    return found


def _run_maven(args: list[str], cache_dir: Path, what: str) -> None:
    command = [mvn(), "-B", "-q", f"-Dmaven.repo.local={cache_dir / 'm2'}", *args]
    # One Maven at a time: the local repository is not safe for concurrent writers.
    with file_lock(cache_dir / "m2.lock"):
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired as error:
            raise DownloadError(
                f"Maven took longer than {MAVEN_TIMEOUT_SECONDS:.0f} s to fetch {what}"
            ) from error
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        hint = ""
        if any("Unknown host" in line or "Could not transfer" in line for line in output):
            hint = " (Maven Central is unreachable: check the network or a mirror in settings.xml)"
        last = "\n".join(output[-25:])
        raise DownloadError(
            f"Maven failed to fetch {what}{hint}; command: {' '.join(command)}\n{last}"
        )


def _pom(artifact: str, coordinates: list[str]) -> str:
    dependencies = "".join(
        "    <dependency><groupId>{}</groupId><artifactId>{}</artifactId>"
        "<version>{}</version></dependency>\n".format(*coordinate.split(":"))
        for coordinate in coordinates
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>local.stackstream</groupId><artifactId>{artifact}</artifactId>"
        "<version>1</version>\n"
        "  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{dependencies}  </dependencies>\n"
        "</project>\n"
    )


def runtime_classpath(cache_dir: Path, name: str, version: str, coordinates: list[str]) -> Path:
    """A lib dir with the runtime jars of `coordinates` (g:a:v); Maven runs once per version."""
    home = cache_dir / f"{name}-{version}"
    lib = home / "lib"
    digest = hashlib.sha1("\n".join(coordinates).encode()).hexdigest()[:10]
    stamp = home / f".complete-{digest}"
    if stamp.is_file():
        return lib
    with file_lock(cache_dir / f"{name}-{version}.lock"):
        if stamp.is_file():
            return lib
        home.mkdir(parents=True, exist_ok=True)
        pom = home / "pom.xml"
        pom.write_text(_pom(f"{name}-runtime", coordinates))
        staging = home / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        _run_maven(
            [
                "-f",
                str(pom),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            cache_dir,
            f"{name} {version} ({', '.join(coordinates)})",
        )
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        for old in home.glob(".complete-*"):
            old.unlink()
        stamp.write_text("\n".join(sorted(jar.name for jar in lib.glob("*.jar"))) + "\n")
    return lib


def artifact_file(cache_dir: Path, coordinate: str, file_name: str) -> Path:
    """One artifact (g:a:v:packaging) copied into cache_dir/dl; Maven runs only if it is absent."""
    target = cache_dir / "dl" / file_name
    if target.is_file():
        return target
    with file_lock(cache_dir / f"{file_name}.lock"):
        if target.is_file():
            return target
        staging = cache_dir / "dl" / f".partial-{file_name}"
        shutil.rmtree(staging, ignore_errors=True)
        _run_maven(
            [
                f"{DEPENDENCY_PLUGIN}:copy",
                f"-Dartifact={coordinate}",
                f"-DoutputDirectory={staging}",
            ],
            cache_dir,
            coordinate,
        )
        downloaded = next(staging.iterdir(), None)
        if downloaded is None:
            raise DownloadError(f"Maven reported success but copied nothing for {coordinate}")
        downloaded.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def unzip(archive: Path, destination: Path) -> None:
    """Extract a zip and keep the Unix permission bits it records (zipfile drops them)."""
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            extracted = Path(zipped.extract(member, destination))
            mode = (member.external_attr >> 16) & 0o777
            if mode and not member.is_dir():
                extracted.chmod(mode)
