"""Install: `pip install torch==2.13.0 -e '.[cpu,test]'` (pin torch first: an unpinned torch pulls CUDA).

faiss comes as an extra: `cpu` (faiss-cpu, what the launch scripts install) or `gpu` (faiss-gpu-cu12), never
both: the two wheels install into one `faiss` package, and with both present the GPU classes vanish and
`fusion.backend: auto` quietly runs the torch kNN (fusion logs which backend it used)."""

from setuptools import find_packages, setup

setup(
    name="fftrain",
    version="0.1.0",
    description="Distributed face-recognition training on several datasets at once (FaceFusion), "
                "with MXNet-compatible RecordIO tools",
    python_requires=">=3.10",
    packages=find_packages(include=["fftrain", "fftrain.*", "recordio_tools", "recordio_tools.*"]),
    package_data={"fftrain.configs": ["*.yaml"]},  # `--config NAME` from an installed package
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "nvidia-dali-cuda120>=1.40",
        "tqdm>=4.60",
        "PyYAML>=6.0",
        "matplotlib>=3.7",
        "Pillow>=10.0",
        "tensorboard>=2.14",
        "scipy>=1.10",
        "simplejpeg>=1.9",
        "infomap>=2.16",       # fftrain pseudo-label: default graph clustering (tested with 2.16.0)
        "leidenalg>=0.12",     # ... leiden backend (tested with 0.12.0)
        "igraph>=1.0",         # ... its graph (tested with 1.0.0)
        "scikit-learn>=1.5",   # ... clustering metrics: pair confusion, contingency, NMI (tested with 1.9.1)
    ],
    extras_require={
        "cpu": ["faiss-cpu>=1.8"],
        "gpu": ["faiss-gpu-cu12>=1.8"],
        "test": ["pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100"],
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
    entry_points={
        "console_scripts": [
            "recordio_tools=recordio_tools.cli:main",
            "fftrain=fftrain.cli:main",
        ],
    },
)
