"""The one packaging step pyproject.toml cannot say: `weights_manifest.json` is kept once, at the top of the checkout
(where it is read and edited), and the build puts it into the package, so an installed irtool finds it beside its
modules (`irtool.weights.catalogue.manifest_path`). Everything else is declared in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MANIFEST = "weights_manifest.json"


class BuildPyWithManifest(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install imports the checkout, which finds the top-level file itself
            self.copy_file(
                str(Path(__file__).resolve().parent / MANIFEST), str(Path(self.build_lib) / "irtool" / MANIFEST)
            )


setup(cmdclass={"build_py": BuildPyWithManifest})
