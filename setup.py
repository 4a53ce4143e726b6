from setuptools import find_packages, setup

setup(
    name="guided-diffusion-anomaly",
    version="0.1.0",
    description="Diffusion models for medical anomaly detection (Wolleb et al., MICCAI 2022), "
    "built on OpenAI's guided diffusion",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["guided_diffusion", "guided_diffusion.*"]),
    install_requires=[
        "torch>=2.3,<3",
        "numpy>=1.26,<3",
        "nibabel>=5.2,<6",
        "scikit-image>=0.22,<0.27",
        "scikit-learn>=1.4,<2",
        "scipy>=1.11,<2",
        "pillow>=10,<14",
        "tqdm>=4.66,<5",
        # the plots of report.html (evaluation/report.py) and progress.png of training (util/progress_plot.py)
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        # visdom 0.2.4 needs setuptools<81 at build time (see constraints.txt)
        "visdom": ["visdom>=0.2.4,<0.3", "tornado>=6.1,<6.5"],
        "mpi": ["mpi4py>=4.0,<5", "mpich>=4.2,<6"],
        # scripts/make_realistic.py reads the MNI152 template and tissue maps nilearn ships in its wheel
        "realistic": ["nilearn>=0.10,<0.15"],
        "dev": [
            "pytest>=8,<10",
            # make test runs one worker per core (tests/conftest.py gives each one thread)
            "pytest-xdist>=3.5,<4",
            "visdom>=0.2.4,<0.3",
            "tornado>=6.1,<6.5",
            "mpi4py>=4.0,<5",
            "mpich>=4.2,<6",
            # test-only: an independent Dice (tests/test_evaluation.py); needs no other torch
            "torchmetrics>=1.4,<2",
            "nilearn>=0.10,<0.15",
            # test-only: drives the system's Chromium (/usr/bin/chromium) over the DevTools protocol
            # (tests/test_report.py); never run `playwright install`, no browser is downloaded
            "playwright>=1.45,<2",
            # test-only: a second NIfTI reader that checks detect.py's output geometry (tests/test_bundle.py)
            "SimpleITK>=2.3,<3",
        ],
    },
)
