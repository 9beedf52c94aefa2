"""The sandbox images setup builds: the base one (image_recipe.py) and variants on top of it.

A variant adds Debian packages to the base's, may purge some of what they pulled in again (an
import check in the finished tree says what must still work), and adds environment. Each has its
own cached root filesystem and its own recipe digest; a variant's covers the base's, so a change to
the base rebuilds both. With a registry, a variant is built from its own Dockerfile, FROM the
base image setup has just made.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from gateway.config import DEFAULT_IMAGE
from gateway.errors import SetupError
from gateway.setup import image_recipe
from gateway.setup.image_recipe import DOCKERFILE, IMAGE_ENV, IMAGE_PACKAGES, customise
from gateway.setup.state import REPO_ROOT, run, say

__all__ = ["BASE", "DATA_SCIENCE", "VARIANTS", "ImageVariant", "finish_rootfs", "installed_of"]


@dataclass(frozen=True, slots=True)
class ImageVariant:
    """One sandbox image: what it adds to the image it `extends` (None: the base image itself)."""

    name: str
    image: str  # the tag setup gives it (the base's comes from --image or $MCP_EXECUTOR_IMAGE)
    dockerfile: Path  # the registry's way to build it
    packages: tuple[str, ...]  # Debian packages for debootstrap, on top of the extended image's
    env: tuple[str, ...] = ()  # NAME=value, on top of the extended image's
    #: Debian packages removed again after debootstrap (`dpkg --purge --force-depends`, those that
    #: are installed): what the packages drag in but nothing in the sandbox needs.
    purge: tuple[str, ...] = ()
    #: Modules that must import (as root, with the image's environment) in the finished tree.
    imports: tuple[str, ...] = ()
    extends: ImageVariant | None = None
    about: str = ""  # what setup says it is building

    @property
    def all_packages(self) -> tuple[str, ...]:
        return (*self.extends.all_packages, *self.packages) if self.extends else self.packages

    @property
    def all_env(self) -> tuple[str, ...]:
        return (*self.extends.all_env, *self.env) if self.extends else self.env

    @property
    def rootfs_name(self) -> str:
        """The cached root filesystem's file name (the base's keeps the name it always had)."""
        prefix = f"sandbox-rootfs-{self.name}" if self.extends else "sandbox-rootfs"
        return f"{prefix}-{self.rootfs_digest()}.tar"

    def rootfs_digest(self) -> str:
        """Names the cached root filesystem: the packages, the purge, the import check, and the
        base's recipe version (customise), through the base's digest."""
        if self.extends is None:
            return image_recipe.rootfs_digest()
        return _digest(
            self.extends.rootfs_digest(),
            self.name,
            *self.packages,
            "purge",
            *self.purge,
            "import",
            *self.imports,
        )

    def recipe_digest(self) -> str:
        """Changes whenever what goes into the image changes, the base image included."""
        if self.extends is None:
            return image_recipe.recipe_digest()
        return _digest(
            self.extends.recipe_digest(), self.rootfs_digest(), *self.env, self.dockerfile.read_text()
        )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


BASE = ImageVariant(
    name="base", image=DEFAULT_IMAGE, dockerfile=DOCKERFILE, packages=IMAGE_PACKAGES, env=IMAGE_ENV
)
#: What python3-fonttools (for matplotlib) drags in through scipy and sympy that nothing imports at
#: run time: pythran with the compilers and -dev packages it builds with, sympy, mpmath.
_DATA_SCIENCE_PURGE = (
    "python3-pythran", "libboost1.74-dev", "libboost-dev", "gcc-12", "g++-12", "g++", "gcc", "cpp-12",
    "cpp", "libstdc++-12-dev", "libgcc-12-dev", "libopenblas-pthread-dev", "libopenblas-dev",
    "libpython3.11-dev", "libpython3-dev", "python3.11-dev", "python3-dev", "python3-all-dev",
    "libpython3-all-dev", "python3-sympy", "python3-mpmath", "unicode-data", "libicu-dev",
    "libexpat1-dev", "zlib1g-dev",
)  # fmt: skip
#: The shipped policy's `data-science` profile. Debian's python3-fonttools (for matplotlib) depends
#: on scipy and sympy, and scipy on pythran, which drags in compilers and -dev packages: about
#: 500 MB. Purged (_DATA_SCIENCE_PURGE), numpy, pandas, scipy and matplotlib still import; apt in
#: the image would report the broken dependencies, but nothing in a sandbox runs apt.
DATA_SCIENCE = ImageVariant(
    name="data-science",
    image="mcp-code-executor:data-science",
    dockerfile=REPO_ROOT / "compose" / "Dockerfile.sandbox-data-science",
    packages=("python3-numpy", "python3-pandas", "python3-matplotlib", "python3-tabulate"),
    # Debian's /etc/matplotlibrc names TkAgg, which is not installed; the root is read-only.
    env=("MPLBACKEND=Agg", "MPLCONFIGDIR=/tmp/.matplotlib"),
    purge=_DATA_SCIENCE_PURGE,
    imports=("numpy", "pandas", "scipy", "matplotlib.pyplot", "tabulate"),
    extends=BASE,
    about="numpy, pandas, matplotlib and tabulate; 2 to 3 minutes the first time, then cached",
)
#: Every image setup builds, the base first.
VARIANTS = (BASE, DATA_SCIENCE)


def installed_of(wanted: tuple[str, ...], dpkg_query: str) -> list[str]:
    """Those of `wanted` that `dpkg-query -W -f '${Package}\\t${db:Status-Status}\\n'` lists as
    installed, in `wanted`'s order."""
    installed = set()
    for line in dpkg_query.splitlines():
        package, _, status = line.partition("\t")
        if status.strip() == "installed":
            installed.add(package.strip())
    return [package for package in wanted if package in installed]


def _purge(root: Path, variant: ImageVariant) -> None:
    if not variant.purge:
        return
    query = ["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}\t${db:Status-Status}\n"]
    present = installed_of(variant.purge, run(query).stdout.decode())
    if not present:
        return
    say(f"purging {len(present)} packages the {variant.name} image does not need: {' '.join(present)}")
    run(["chroot", str(root), "dpkg", "--purge", "--force-depends", *present], timeout=600)


def _check_imports(root: Path, variant: ImageVariant) -> None:
    if not variant.imports:
        return
    code = "import " + ", ".join(variant.imports)
    try:
        run(["chroot", str(root), "env", "-i", *variant.all_env, "python3", "-B", "-c", code], timeout=300)
    except SetupError as exc:
        raise SetupError(f"the {variant.name} image's root filesystem fails `{code}`: {exc}") from exc
    finally:
        for leftover in (root / "tmp").iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    say(f"the {variant.name} root filesystem imports {', '.join(variant.imports)}")


def finish_rootfs(root: Path, variant: ImageVariant) -> None:
    """A debootstrap tree of `variant.all_packages` made into the image's root filesystem: the
    purge, then the base's steps (customise: the user, no setuid, no docs), then the import check."""
    _purge(root, variant)
    customise(root)
    _check_imports(root, variant)
