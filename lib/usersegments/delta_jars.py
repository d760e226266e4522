"""The delta-spark jars: their Maven coordinate, and the copy a local session uses.

A cluster brings Delta with ``spark-submit --packages`` (``package()`` names the
coordinate) and a Databricks runtime ships it. A local session started from Python
has no such step, so ``make`` runs ``python -m usersegments.delta_jars fetch``:
Maven (``deps/delta/pom.xml``) copies the jars matching the installed pyspark and
delta-spark into ``<venv>/delta-jars/``, and ``session`` puts them on the classpath.
Maven keeps what it downloaded in its local repository (``~/.m2``), and a fetch
whose jars are already there does not run Maven at all.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCALA_BINARY = "2.13"
JARS_DIR = Path(sys.prefix) / "delta-jars"
# Written last by a fetch that succeeded: the coordinate the jars beside it are for
# (and the file make checks, so a second make does not run Maven).
MANIFEST = "coordinates.txt"
DEFAULT_POM = Path("deps/delta/pom.xml")
MAVEN_TIMEOUT_S = 900
FETCH_FIX = "run `make install` (it fetches them with Maven)"

# mvn output that means the network, not the coordinate, is the problem.
_UNREACHABLE = re.compile(
    r"Could not transfer|Unknown host|UnknownHost|Connection refused|Connect to .* failed|"
    r"Network is unreachable|timed out|No route to host|Temporary failure in name resolution",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(r"Could not find artifact|was not found in", re.IGNORECASE)
_JAR_NAME = re.compile(r"^(?P<artifact>.+?)-\d[^/]*\.jar$")


def delta_version() -> str:
    """The version of the delta-spark pip package installed here."""
    return importlib.metadata.version("delta-spark")


def spark_binary_version() -> str:
    """Major.minor of the installed pyspark, e.g. ``4.2``."""
    return ".".join(importlib.metadata.version("pyspark").split(".")[:2])


def artifact_id(delta: str, spark_binary: str) -> str:
    """Delta's Maven artifact for a release and a Spark line: from Delta 4.1 on it names
    the Spark line (``delta-spark_4.2_2.13``), before that only Scala's."""
    major, minor = (int(part) for part in re.findall(r"\d+", delta)[:2])
    if (major, minor) >= (4, 1):
        return f"delta-spark_{spark_binary}_{SCALA_BINARY}"
    return f"delta-spark_{SCALA_BINARY}"


def wanted() -> tuple[str, str, str]:
    """(artifact, release line ``major.minor``, version) of the installed delta-spark."""
    version = delta_version()
    line = ".".join(re.findall(r"\d+", version)[:2])
    return artifact_id(version, spark_binary_version()), line, version


def version_range() -> str:
    """The Maven range a fetch resolves: the installed delta-spark's release line up to
    its version. Maven takes the newest published, so a pip patch release without jars
    of its own (delta-spark 4.4.1 has none on Central) gets that line's latest jars."""
    _, line, version = wanted()
    return f"[{line}.0,{version}]"


def fetched_coordinate(jars_dir: Path | None = None) -> str | None:
    """The coordinate of the fetched jars when they suit the installed pyspark and
    delta-spark (same artifact and release line, not newer); else ``None``."""
    manifest = (jars_dir or JARS_DIR) / MANIFEST
    if not manifest.is_file():
        return None
    coordinate = manifest.read_text().strip()
    artifact, line, version = wanted()
    group, got_artifact, got_version = (coordinate.split(":") + ["", ""])[:3]
    suits = (
        group == "io.delta"
        and got_artifact == artifact
        and got_version.startswith(line + ".")
        and _release(got_version) <= _release(version)
    )
    return coordinate if suits else None


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def package() -> str:
    """The ``--packages`` coordinate for this pyspark and delta-spark: the fetched jars'
    when there are some, else the installed delta-spark's own version."""
    fetched = fetched_coordinate()
    if fetched:
        return fetched
    artifact, _, version = wanted()
    return f"io.delta:{artifact}:{version}"


def fetched_jars(jars_dir: Path | None = None) -> list[str]:
    """The fetched jars when they suit the installed pyspark and delta-spark; else none
    (never fetched, or fetched for other versions)."""
    folder = jars_dir or JARS_DIR
    if fetched_coordinate(folder) is None:
        return []
    return sorted(str(p) for p in folder.glob("*.jar"))


def missing_reason(jars_dir: Path | None = None) -> str:
    """One line: why ``fetched_jars`` is empty, and the fix."""
    folder = jars_dir or JARS_DIR
    manifest = folder / MANIFEST
    artifact, _, _ = wanted()
    need = f"io.delta:{artifact}:{version_range()}"
    if not manifest.is_file():
        return f"the delta-spark jars ({need}) are not in {folder}: {FETCH_FIX}"
    return (
        f"the jars in {folder} are for {manifest.read_text().strip()}, but the installed "
        f"pyspark and delta-spark need {need}: {FETCH_FIX}"
    )


def pyspark_artifact_ids() -> list[str]:
    """Artifact ids of the jars pyspark ships: the JVM has them already, so the fetch
    leaves them out (another version beside them would only risk a conflict)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        return []
    jars = Path(spec.origin).parent / "jars"
    names = (_JAR_NAME.match(p.name) for p in jars.glob("*.jar"))
    return sorted({m.group("artifact") for m in names if m})


def maven_command(pom: Path, into: Path) -> list[str]:
    """``mvn`` copying delta-spark's runtime closure, less pyspark's jars, into ``into``."""
    artifact, _, _ = wanted()
    return [
        "mvn",
        "--batch-mode",
        "--quiet",
        "--update-snapshots",  # retry a failure Maven cached (e.g. from an offline run)
        "--file",
        str(pom),
        f"-Ddelta.artifact={artifact}",
        f"-Ddelta.version={version_range()}",
        # Full plugin coordinates: no plugin-prefix look-up on Central.
        "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={into}",
        "-DexcludeArtifactIds=" + ",".join(pyspark_artifact_ids()),
    ]


def maven_failure(output: str) -> str:
    """A one-line reason for a failed ``mvn`` run, from its output."""
    artifact, _, _ = wanted()
    if _UNREACHABLE.search(output):
        return "Maven Central is unreachable from this machine"
    if _NOT_FOUND.search(output) or "No versions available" in output:
        return (
            f"no io.delta:{artifact} in {version_range()} on Maven Central: pin delta-spark "
            "(pip) to a release whose jars are published for this pyspark"
        )
    errors = [line for line in output.splitlines() if "ERROR" in line and line.strip()]
    return "mvn failed: " + (errors[0].strip() if errors else output.strip()[-300:])


def fetch(pom: Path = DEFAULT_POM, jars_dir: Path | None = None) -> str | None:
    """Put the jars for the installed pyspark and delta-spark into ``jars_dir``; ``None``
    when they are there, else a one-line reason they are not. Suitable jars already
    fetched are kept as they are, without running Maven."""
    folder = jars_dir or JARS_DIR
    if fetched_jars(folder):
        (folder / MANIFEST).touch()  # up to date: make sees a stamp newer than its inputs
        return None
    if shutil.which("mvn") is None:
        return "Maven (mvn) is not installed (Debian/Ubuntu: apt-get install -y maven)"
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".delta-jars-", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the jars from other users
    try:
        done = subprocess.run(
            maven_command(pom, staging),
            capture_output=True,
            text=True,
            timeout=MAVEN_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            return maven_failure(done.stdout + done.stderr)
        artifact, _, _ = wanted()
        resolved = [p.name for p in staging.glob(f"{artifact}-*.jar")]
        if len(resolved) != 1:
            return f"mvn copied no single {artifact} jar into {staging}"
        version = resolved[0][len(artifact) + 1 : -len(".jar")]
        (staging / MANIFEST).write_text(f"io.delta:{artifact}:{version}\n")
        # Swap the folder in one step, so a stopped fetch never leaves half a set.
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except subprocess.TimeoutExpired:
        return f"mvn took over {MAVEN_TIMEOUT_S}s (is Maven Central reachable?)"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m usersegments.delta_jars fetch|package|path``; a failed fetch prints one
    line and exits 0, since the local store can go on with delta-rs."""
    parser = argparse.ArgumentParser(prog="python -m usersegments.delta_jars")
    parser.add_argument("action", choices=["fetch", "package", "path"])
    parser.add_argument("--pom", type=Path, default=DEFAULT_POM)
    args = parser.parse_args(argv)
    if args.action == "package":
        print(package())
        return 0
    if args.action == "path":
        print(",".join(fetched_jars()) or missing_reason())
        return 0
    reason = fetch(args.pom)
    if reason is None:
        print(f"delta-spark jars: {package()} in {JARS_DIR} ({len(fetched_jars())} jars)")
    else:
        print(
            f"delta-spark jars not fetched: {reason}; going on with delta-rs only "
            "(the delta-spark tests fail under CI=true)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
