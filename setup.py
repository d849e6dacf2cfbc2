"""Installs the a2p framework: the `a2p` and `data_tools` packages and the `a2p` command."""

from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("a2p/version.py").read_text(), version)

setup(
    name="a2p",
    version=version["__version__"],
    description="Audio2Photoreal motion models at cluster scale: shards, training, sharded inference.",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["a2p", "a2p.*", "data_tools", "data_tools.*"]),
    install_requires=[
        # torchaudio from the registry is built against the matching CUDA torch: pin the pair.
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "deepspeed==0.19.8",
        "accelerate==1.15.0",
        "webdataset==1.0.2",
        # webdataset's indexed reader (random access into the tar shards), its own package since 0.3
        "wids==0.1.11",
        "tensorboard==2.21.0",
        "numpy>=1.26,<3",
        "soundfile==0.14.0",
        "tqdm>=4.66",
        "safetensors==0.8.0",
        "matplotlib==3.11.2",
    ],
    extras_require={"dev": ["pytest==9.2.0", "ruff==0.17.6"]},
    entry_points={"console_scripts": ["a2p=a2p.cli.main:main"]},
)
