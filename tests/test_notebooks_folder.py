"""The jupyterlab role's notebooks folder on a server: seeded with the project's notebooks, once,
and with nothing else that the project's folder holds (it is also the local stack's live folder,
where JupyterLab leaves checkpoints and tests and users leave files)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import BIN, PROJECT, one_play_project, run

ROLE = PROJECT / "roles" / "jupyterlab"


def seed(tmp_path: Path, project: Path, server: Path) -> int:
    """Run the role's notebooks tasks, with its vars, against a server folder; the number of
    changed tasks. (Not include_role: it would also run the role's image dependencies.)"""
    play = tmp_path / "play"
    play.mkdir(exist_ok=True)
    inventory = one_play_project(play, (
        "- name: Seed\n  hosts: localhost\n  gather_facts: false\n"
        f"  vars_files: [{ROLE}/vars/main.yml, {PROJECT}/group_vars/all/paths.yml]\n  tasks:\n"
        f"    - name: Notebooks\n      ansible.builtin.import_tasks: {ROLE}/tasks/notebooks.yml\n"))
    result = run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(play / "play.yml"),
                  "-e", f"aie_project_dir={project}", "-e", f"jupyterlab_notebooks_dir={server}"],
                 timeout=300, cwd=play)
    assert result.returncode == 0, result.stdout + result.stderr
    recap = re.search(r"localhost\s*:.*changed=(\d+)", result.stdout)
    assert recap, result.stdout
    return int(recap.group(1))


def test_the_server_gets_the_projects_notebooks_once_and_nothing_else(tmp_path: Path) -> None:
    project, server = tmp_path / "project", tmp_path / "server"
    notebooks = project / "notebooks"
    (notebooks / ".ipynb_checkpoints").mkdir(parents=True)
    (notebooks / "train.ipynb").write_text('{"cells": []}')
    (notebooks / ".ipynb_checkpoints" / "train-checkpoint.ipynb").write_text("{}")
    (notebooks / ".aie-write-probe").write_text("")
    (notebooks / "scratch.txt").write_text("a user's file")

    assert seed(tmp_path, project, server) == 2  # the folder made, a notebook copied
    assert sorted(p.name for p in server.iterdir()) == ["train.ipynb"]

    # A notebook the user changed on the server stays theirs; files left in the project's folder
    # meanwhile (a checkpoint, a probe) change nothing.
    (server / "train.ipynb").write_text('{"cells": ["mine"]}')
    (notebooks / ".aie-probe").write_text("")
    (notebooks / ".ipynb_checkpoints" / "other-checkpoint.ipynb").write_text("{}")
    assert seed(tmp_path, project, server) == 0
    assert (server / "train.ipynb").read_text() == '{"cells": ["mine"]}'
    assert sorted(p.name for p in server.iterdir()) == ["train.ipynb"]
