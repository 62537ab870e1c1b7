"""Packaging for aie: the deployment CLI and the paramiko-based SFTP artifact store."""

from setuptools import find_packages, setup

setup(
    name="aie",
    version="0.1.0",
    description="Deploy an MLflow experiment-tracking stack (MLflow, SFTP, S3, JupyterLab) with Ansible",
    packages=find_packages(include=["aie", "aie.*"]),
    package_data={"aie": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        "paramiko>=3.4,<6",
    ],
    extras_require={
        # What the `aie` CLI needs to run the playbooks, and what the modules import where they
        # run on the controller (the local inventory): community.docker needs requests,
        # amazon.aws boto3 (tests/test_bootstrap.py runs one module of each).
        "deploy": [
            "ansible>=11,<13",
            "ansible-runner>=2.4,<3",
            "boto3>=1.34,<2",
            "PyYAML>=6,<7",
            "requests>=2.28,<3",
        ],
        # What the artifact store needs inside MLflow (server and notebooks).
        "mlflow": [
            "mlflow[auth]>=3.1,<4",
        ],
        "test": [
            "pytest>=8,<10",
            # `make unit` runs on every core, `make test` on two workers; filelock lets the
            # workers take turns at building images.
            "pytest-xdist>=3.5,<4",
            # Drives Debian's Chromium through its ChromeDriver (tests/test_jupyterhub.py).
            "selenium>=4.30,<5",
            "filelock>=3.12",
            "ruff>=0.6",
            "mypy>=1.10",
            "types-paramiko",
            "types-PyYAML",
            "ansible-lint>=24",
            "yamllint>=1.35",
            # Resolves the images' requirements for other platforms (tests/test_platforms.py).
            "uv>=0.5",
            "molecule>=25",
            "molecule-plugins[docker]>=23",
            # The backup container's cron parser (Debian's python3-croniter there), for
            # tests/test_backup_tool.py.
            "croniter>=2",
        ],
    },
    entry_points={
        "console_scripts": ["aie=aie.cli:main"],
        # MLflow loads these entry points after its built-in stores, so `sftp://`
        # URIs are served by aie's paramiko store instead of the pysftp one; `aie-routed:/`
        # is the destination of the server's proxied artifacts (aie/artifact_routes.py).
        "mlflow.artifact_repository": [
            "sftp=aie.sftp_store:SFTPArtifactRepository",
            "aie-routed=aie.artifact_routes:RoutedArtifactRepository",
        ],
    },
)
